"""Auditor API: audit events (never content, only HMACs of it) and chain verification."""

from __future__ import annotations

from aiohttp import web

from deepseekd.http.errors import bad_request
from deepseekd.http.state import AUDIT

MAX_PAGE = 1000
MAX_NUMBER = 2**53  # past any id or epoch second, and inside every database's integer type


def _number(request: web.Request, name: str, kind: type[float] | type[int]) -> float | None:
    """Query parameter ``name`` as a number from 0 to MAX_NUMBER, or None when absent."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise bad_request(f"{name}: must be a number", param=name) from None
    if value != value or not 0 <= value <= MAX_NUMBER:  # NaN, negative, infinite or huge
        raise bad_request(f"{name}: must be a number from 0 to {MAX_NUMBER}", param=name)
    return value


def _integer(request: web.Request, name: str, default: int) -> int:
    value = _number(request, name, int)
    return default if value is None else int(value)


async def events(request: web.Request) -> web.Response:
    """Filters: since/until (epoch seconds), actor, action; paging: after_id + limit."""
    limit = _integer(request, "limit", 100)
    if not 1 <= limit <= MAX_PAGE:
        raise bad_request(f"limit: from 1 to {MAX_PAGE}", param="limit")
    rows = await request.app[AUDIT].query(
        since=_number(request, "since", float),
        until=_number(request, "until", float),
        actor=request.query.get("actor") or None,
        action=request.query.get("action") or None,
        after_id=_integer(request, "after_id", 0),
        limit=limit,
    )
    next_after = rows[-1]["id"] if len(rows) == limit else None
    return web.json_response({"events": rows, "next_after_id": next_after})


async def verify(request: web.Request) -> web.Response:
    result = await request.app[AUDIT].verify()
    return web.json_response(result.as_json(), status=200)
