"""Answer feedback: a user's thumbs up or down on one of their own answers, with an optional
comment, and the admin's report of it.

It is kept on the turn it rates: the rating and when it was set in clear (the report counts
them), the comment sealed under the user's data key like the turn's other content, bound to
the turn and its rating. Deleting the conversation, the retention purge and erasure take it
with the turn. The report (``GET /admin/api/feedback``) counts ratings per model, adapter
and day: never a comment, a prompt or an answer, nor who rated.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Invalid, NotFound
from deepseekd.domain.identity import Identity
from deepseekd.services.audit import AuditLog
from deepseekd.services.history import not_found, valid_id
from deepseekd.services.keys import KeyService
from deepseekd.services.turns import meta_of, seal_feedback
from deepseekd.services.usage import QuotaService
from deepseekd.services.usage_report import report_range
from deepseekd.store import Tx
from deepseekd.store import feedback as repo
from deepseekd.store import history as history_repo
from deepseekd.store.db import Database

RATINGS = ("up", "down")
COMMENT_CHARS = 1000
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def check(rating: str | None, comment: str | None) -> tuple[str | None, str]:
    """The rating and the comment as stored, or a 400 naming the field."""
    if rating is not None and rating not in RATINGS:
        raise Invalid("rating: 'up', 'down' or null (no rating)", field="rating")
    text = (comment or "").replace("\r\n", "\n").strip()
    if len(text) > COMMENT_CHARS:
        raise Invalid(
            f"comment: at most {COMMENT_CHARS} characters (this one has {len(text)})",
            field="comment",
        )
    if _CONTROL.search(text):
        raise Invalid(
            "comment: plain text only: no control characters but line breaks", field="comment"
        )
    if text and rating is None:
        raise Invalid("comment: a comment goes with a rating ('up' or 'down')", field="comment")
    return rating, text


def turn_not_found(turn_id: str) -> NotFound:
    return NotFound(f"turn_id: no turn '{turn_id[:64]}' in this conversation", field="turn_id")


@dataclass(frozen=True)
class FeedbackDay:
    model: str
    adapter: str | None
    day: str
    up: int
    down: int
    with_comment: int


@dataclass(frozen=True)
class FeedbackReport:
    first: str
    last: str
    days: tuple[FeedbackDay, ...]
    """Sorted by model, adapter, then day; days without a rating are left out."""

    def as_json(self) -> dict[str, Any]:
        totals: dict[tuple[str, str | None], list[int]] = {}
        for d in self.days:
            acc = totals.setdefault((d.model, d.adapter), [0, 0, 0])
            acc[0], acc[1], acc[2] = acc[0] + d.up, acc[1] + d.down, acc[2] + d.with_comment
        return {
            "object": "list",
            "from": self.first,
            "to": self.last,
            "data": [asdict(d) for d in self.days],
            "totals": [
                {"model": m, "adapter": a, "up": u, "down": n, "with_comment": c}
                for (m, a), (u, n, c) in totals.items()
            ],
        }


def build_report(
    first: str, last: str, rows: Iterable[Any], day_of: Callable[[float], str]
) -> FeedbackReport:
    """Count ``rows`` (model, set at, rating, has a comment) per model, adapter and the
    quota day (``day_of``) each rating was set on, keeping the days ``first``..``last``."""
    counts: dict[tuple[str, str, str], list[int]] = {}
    for model, at, rating, commented in rows:
        day = day_of(float(at))
        if not first <= day <= last:
            continue
        base, _, adapter = str(model).partition(":")
        acc = counts.setdefault((base, adapter, day), [0, 0, 0])
        acc[0 if rating == "up" else 1] += 1
        acc[2] += 1 if commented else 0
    days = tuple(
        FeedbackDay(base, adapter or None, day, up, down, with_comment)
        for (base, adapter, day), (up, down, with_comment) in sorted(counts.items())
    )
    return FeedbackReport(first, last, days)


def _epoch(day: str) -> float:
    return float(calendar.timegm(dt.date.fromisoformat(day).timetuple()))


class FeedbackService:
    def __init__(
        self,
        db: Database,
        keys: KeyService,
        audit: AuditLog,
        quota: QuotaService,
        clock: Callable[[], float],
    ) -> None:
        self._db = db
        self._keys = keys
        self._audit = audit
        self._quota = quota
        self._now = clock

    async def rate(
        self,
        who: Identity,
        conversation_id: str,
        turn_id: str,
        rating: str | None,
        comment: str | None,
    ) -> dict[str, Any]:
        """Set (replace) the caller's feedback on one of their answers; a null rating takes
        it back, comment and all. Another user's conversation or turn is a 404."""
        if not valid_id(conversation_id):
            raise not_found(conversation_id)
        if not valid_id(turn_id):
            raise turn_not_found(turn_id)
        rating, text = check(rating, comment)
        now = self._now()

        def write(s: Tx) -> None:
            turn = repo.turn_of(s, conversation_id, turn_id, who.user_id)
            if turn is None:
                if history_repo.owner(s, conversation_id) != who.user_id:
                    raise not_found(conversation_id)
                raise turn_not_found(turn_id)
            key = self._keys.user_key(s, who.user_id, create=False)
            if key is None:  # no data key: nothing of the user's can be read or sealed
                raise turn_not_found(turn_id)
            turn.feedback_rating = rating
            turn.feedback_at = now if rating is not None else None
            turn.feedback_comment_ct = (
                seal_feedback(key, meta_of(turn, who.user_id), rating, text)
                if rating is not None and text
                else None
            )
            extra = {"conversation": conversation_id, "rating": rating, "comment": bool(text)}
            self._audit.append_in(
                s,
                Event.by(
                    who, "feedback.set", target=f"turn:{turn_id}", model=turn.model, extra=extra
                ),
            )

        await self._audit.transaction("feedback.set", write, "feedback.set")
        return {
            "object": "feedback",
            "conversation_id": conversation_id,
            "turn_id": turn_id,
            "rating": rating,
            "comment": text,
            "updated_at": now if rating is not None else None,
        }

    async def report(self, who: Identity, first: str | None, last: str | None) -> FeedbackReport:
        """Ratings per model, adapter and quota day for the days ``first``..``last``
        (inclusive, 'YYYY-MM-DD'; by default the 30 ending today, at most 366); audited
        (``feedback.report``)."""
        today = self._quota.window(self._now())[0]
        start, end = report_range(first, last, dt.date.fromisoformat(today))
        # Every instant whose quota day may fall in the range (a day to spare on each side,
        # for the time zone and the reset hour); each is then counted on its own quota day.
        lo, hi = _epoch(start) - 2 * 86400, _epoch(end) + 3 * 86400
        rows = await self._db.read("feedback.report", lambda s: repo.ratings_between(s, lo, hi))
        report = build_report(start, end, rows, lambda at: self._quota.window(at)[0])
        await self._audit.append(Event.by(who, "feedback.report", extra={"from": start, "to": end}))
        return report
