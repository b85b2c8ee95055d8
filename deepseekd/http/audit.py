"""Auditor API: audit events (never content, only HMACs of it), chain verification, and the
export of the log (JSON lines, CSV, FHIR), streamed."""

from __future__ import annotations

import logging

from aiohttp import web

from deepseekd.http.errors import bad_request
from deepseekd.http.openai.sse import StallGuardedResponse
from deepseekd.http.state import AUDIT, CLOCK, IDENTITY, SETTINGS
from deepseekd.services.audit_export import FORMATS, AuditExport, Filters

log = logging.getLogger("deepseekd.http")

MAX_PAGE = 1000
MAX_NUMBER = 2**53  # past any id or epoch second, and inside every database's integer type
MAX_TEXT = 64  # the longest actor, action or outcome the log holds


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


def _text(request: web.Request, name: str) -> str | None:
    value = request.query.get(name) or None
    if value is not None and len(value) > MAX_TEXT:
        raise bad_request(f"{name}: at most {MAX_TEXT} characters", param=name)
    return value


def _filters(request: web.Request) -> Filters:
    """since/until (epoch seconds), actor, action and outcome, as both routes take them."""
    return Filters(
        since=_number(request, "since", float),
        until=_number(request, "until", float),
        actor=_text(request, "actor"),
        action=_text(request, "action"),
        outcome=_text(request, "outcome"),
    )


async def events(request: web.Request) -> web.Response:
    """Filters: since/until (epoch seconds), actor, action, outcome; the oldest first, or
    with order=desc the newest first; paging: after_id (or before_id, newest first) + limit."""
    limit = _integer(request, "limit", 100)
    if not 1 <= limit <= MAX_PAGE:
        raise bad_request(f"limit: from 1 to {MAX_PAGE}", param="limit")
    order = request.query.get("order") or "asc"
    if order not in ("asc", "desc"):
        raise bad_request("order: asc (the oldest first) or desc (the newest first)", param="order")
    before = _number(request, "before_id", int)
    f = _filters(request)
    rows = await request.app[AUDIT].query(
        since=f.since,
        until=f.until,
        actor=f.actor,
        action=f.action,
        outcome=f.outcome,
        after_id=_integer(request, "after_id", 0),
        before_id=None if before is None else int(before),
        newest_first=order == "desc",
        limit=limit,
    )
    last = rows[-1]["id"] if len(rows) == limit else None
    return web.json_response(
        {
            "events": rows,
            "next_after_id": last if order == "asc" else None,
            "next_before_id": last if order == "desc" else None,
        }
    )


async def export(request: web.Request) -> web.StreamResponse:
    """The events that match the filters, the oldest first, as a download: JSON lines,
    CSV, or a FHIR Bundle of AuditEvents (R4, or R5 with format=fhir-r5). Audited."""
    fmt = request.query.get("format") or "jsonl"
    if fmt not in FORMATS:
        raise bad_request(f"format: one of {', '.join(FORMATS)}", param="format")
    filters = _filters(request)
    if request.method == "HEAD":  # what a download would be, without running (or auditing) it
        return web.Response(headers={"Content-Type": FORMATS[fmt].media_type})
    exporter = AuditExport(request.app[AUDIT], request.app[CLOCK])
    job = await exporter.start(fmt, filters, request[IDENTITY])
    resp = StallGuardedResponse(
        request,
        request.app[SETTINGS].server.stream_stall_timeout_s,
        headers={
            "Content-Type": job.format.media_type,
            "Content-Disposition": f'attachment; filename="{job.filename}"',
        },
    )
    await resp.prepare(request)
    try:
        async for chunk in job.chunks():
            await resp.write(chunk.encode())
    except ConnectionResetError:
        raise
    except Exception:
        # The status is sent: cut the connection, so the client sees a failed download
        # rather than a file that looks complete.
        log.exception("audit export failed", extra={"event_id": job.event_id})
        if request.transport is not None:
            request.transport.abort()
        return resp
    await resp.write_eof()
    return resp


async def verify(request: web.Request) -> web.Response:
    result = await request.app[AUDIT].verify()
    return web.json_response(result.as_json(), status=200)
