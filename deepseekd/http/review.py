"""The access review for auditors (``GET /audit/api/access-review``), as JSON or CSV."""

from __future__ import annotations

from aiohttp import web

from deepseekd.http.admin import report_answer, wants_csv
from deepseekd.http.state import IDENTITY, SERVICES


async def access_review(request: web.Request) -> web.Response:
    """Who accessed whose data, sign-ins per account, dormant accounts and admins without a
    recent second factor, for days ``from``..``to`` (YYYY-MM-DD, inclusive; by default the
    last 30 ending today in the quota time zone, at most 366). ``dormant_days`` (1-3650)
    overrides ``[audit] dormant_days``. Each report is audited (``report.access``)."""
    as_csv = wants_csv(request)
    q = request.query
    report = await request.app[SERVICES].access_review.report(
        q.get("from"),
        q.get("to"),
        q.get("dormant_days"),
        by=request[IDENTITY],
        fmt="csv" if as_csv else "json",
    )
    return report_answer(report, as_csv)
