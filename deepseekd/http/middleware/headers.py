"""Headers on every response, streamed ones included (``on_response_prepare``): the request
id, security headers, no caching of answers, and the caller's daily quota."""

from __future__ import annotations

from aiohttp import web

from deepseekd.http.state import CALLER, QUOTA_STATE, REQUEST_ID

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
    "object-src 'none'"
)


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    if REQUEST_ID in request:
        response.headers.setdefault("X-Request-Id", request[REQUEST_ID])
    h = response.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("X-Frame-Options", "DENY")
    if not request.path.startswith("/static/"):
        h.setdefault("Cache-Control", "no-store")  # answers and user data stay off disk caches
    caller = request.get(CALLER)
    state = (
        caller.quota
        if caller is not None and caller.quota is not None
        else request.get(QUOTA_STATE)
    )
    if state is not None:
        h["X-RateLimit-Limit"] = str(state.limit)
        h["X-RateLimit-Remaining"] = str(state.remaining)
        h["X-RateLimit-Reset"] = str(state.reset_at)
