from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_of(request: web.Request) -> str:
    """The canonical path of the matched route, or 'unmatched'."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


OPEN_PATHS = frozenset({"/healthz", "/readyz"})
"""Probes: not logged, not gated by the drain."""
