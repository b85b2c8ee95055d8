"""Request id, the request's log line, its latency metric and its trace span."""

from __future__ import annotations

import logging
import re
import time
import uuid

from aiohttp import web

from deepseekd.http.middleware.types import OPEN_PATHS, Handler, route_of
from deepseekd.http.state import IDENTITY, METRICS, QUIET, REQUEST_ID, REQUEST_START, TRACING

log = logging.getLogger("deepseekd.http")

_RID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take a sane ``X-Request-Id`` from the client or make one; echo it on the response."""
    incoming = request.headers.get("X-Request-Id", "")
    rid = incoming if _RID_RE.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = rid
    start = request[REQUEST_START] = time.monotonic()
    status = 500
    tracer = request.app[TRACING].tracer
    span = tracer.start_span(f"{request.method} {route_of(request)}") if tracer else None
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = route_of(request)
        if span is not None:
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            span.set_attribute("deepseekd.request_id", rid)
            span.end()
        elapsed = time.monotonic() - start
        request.app[METRICS].observe_http(route, request.method, status, elapsed)
        if request.path not in OPEN_PATHS and not request.get(QUIET):
            who = request.get(IDENTITY)
            log.info(
                "request",
                extra={
                    "request_id": rid,
                    "method": request.method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1e3, 1),
                    "user_id": who.user_id if who else None,
                },
            )
