"""Backpressure: at most ``server.max_queued_requests`` inference requests are admitted at
once; past that a new one gets an immediate 503 with Retry-After.

The engine queues whatever it is given, so without a limit a burst grows memory and
latency until every client times out. Refusing early and cheaply (before authentication
touches the database, and before quota is charged) keeps the admitted requests fast and
tells the rest when to come back.
"""

from __future__ import annotations

from aiohttp import web

from deepseekd.api.access import access_for
from deepseekd.api.errors import unavailable
from deepseekd.keys import METRICS, SETTINGS
from deepseekd.api.middlewares import Handler

RETRY_AFTER_S = 1


class Admission:
    """Counts admitted inference requests; one per app."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.admitted = 0


ADMISSION = web.AppKey("admission", Admission)


def setup(app: web.Application) -> None:
    app[ADMISSION] = Admission(app[SETTINGS].server.max_queued_requests)


@web.middleware
async def backpressure_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    rule = access_for(request.method, resource.canonical) if resource is not None else None
    if rule is None or not rule.quota:  # only inference routes queue for the engine
        return await handler(request)
    adm = request.app[ADMISSION]
    if adm.limit and adm.admitted >= adm.limit:
        request.app[METRICS].overload_rejections.inc()
        raise unavailable(f"the server is at capacity ({adm.limit} requests in progress); "
                          f"retry after {RETRY_AFTER_S} s", code="server_overloaded",
                          retry_after=RETRY_AFTER_S)
    adm.admitted += 1
    try:
        return await handler(request)
    finally:
        adm.admitted -= 1
