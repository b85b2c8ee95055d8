"""Answer feedback: the owner rates an answer of theirs (``PUT .../turns/{turn_id}/feedback``);
an admin reads the counts per model, adapter and day (``GET /admin/api/feedback``)."""

from __future__ import annotations

from aiohttp import web

from deepseekd.http.body import StrictBody, body_of
from deepseekd.http.state import FEEDBACK, IDENTITY


class FeedbackBody(StrictBody):
    rating: str | None
    """'up', 'down', or null to take the rating (and comment) back."""
    comment: str | None = None
    """Optional, up to 1000 characters; needs a rating."""


async def put_feedback(request: web.Request) -> web.Response:
    """Rate one of the caller's answers (a turn of their conversation): it replaces any
    earlier rating and comment. Another user's conversation or turn is a 404."""
    body = body_of(request, FeedbackBody)
    found = request.match_info
    answer = await request.app[FEEDBACK].rate(
        request[IDENTITY], found["conversation_id"], found["turn_id"], body.rating, body.comment
    )
    return web.json_response(answer)


async def feedback_report(request: web.Request) -> web.Response:
    """Ratings per model, adapter and day: up, down and how many came with a comment; never
    a comment, prompt or answer. Days ``from``..``to`` inclusive (YYYY-MM-DD, by default
    the last 30 ending today, at most 366)."""
    q = request.query
    report = await request.app[FEEDBACK].report(request[IDENTITY], q.get("from"), q.get("to"))
    return web.json_response(report.as_json())
