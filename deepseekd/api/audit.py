"""Auditor API: audit events (never content, only HMACs of it) and chain verification."""

from __future__ import annotations

from aiohttp import web

from deepseekd.api.errors import bad_request
from deepseekd.keys import AUDIT

routes = web.RouteTableDef()

MAX_PAGE = 1000
MAX_NUMBER = 2**53  # past any id or epoch second, and inside every database's integer type


def _num(request: web.Request, name: str, kind: type, default: object = None) -> object:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise bad_request(f"{name}: must be a number", param=name) from None
    if value != value or not 0 <= value <= MAX_NUMBER:  # NaN, negative, infinite or huge
        raise bad_request(f"{name}: must be a number from 0 to {MAX_NUMBER}", param=name)
    return value


@routes.get("/audit/api/events")
async def events(request: web.Request) -> web.Response:
    """Filters: since/until (epoch seconds), actor, action; paging: after_id + limit."""
    limit = _num(request, "limit", int, 100)
    if not 1 <= limit <= MAX_PAGE:  # type: ignore[operator]
        raise bad_request(f"limit: from 1 to {MAX_PAGE}", param="limit")
    rows = await request.app[AUDIT].query(
        since=_num(request, "since", float), until=_num(request, "until", float),  # type: ignore[arg-type]
        actor=request.query.get("actor") or None, action=request.query.get("action") or None,
        after_id=_num(request, "after_id", int, 0), limit=limit)  # type: ignore[arg-type]
    next_after = rows[-1]["id"] if len(rows) == limit else None
    return web.json_response({"events": rows, "next_after_id": next_after})


@routes.get("/audit/api/verify")
async def verify(request: web.Request) -> web.Response:
    result = await request.app[AUDIT].verify()
    return web.json_response(result.as_json(), status=200)
