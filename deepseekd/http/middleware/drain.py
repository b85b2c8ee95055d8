"""Count requests in flight for the drain; refuse new work once draining."""

from __future__ import annotations

from aiohttp import web

from deepseekd.domain.errors import Unavailable
from deepseekd.http.middleware.types import OPEN_PATHS, Handler
from deepseekd.http.state import LIFECYCLE


@web.middleware
async def drain_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in OPEN_PATHS:
        return await handler(request)
    life = request.app[LIFECYCLE]
    if life.draining:
        raise Unavailable("the service is shutting down", code="shutting_down", retry_after=30)
    life.enter()
    try:
        return await handler(request)
    finally:
        life.leave()
