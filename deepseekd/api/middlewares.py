"""Request id, error shape, drain gate and authentication, in that order."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any, Awaitable, Callable

from aiohttp import web

from deepseekd.api.errors import APIError, unavailable
from deepseekd.api.schemas import parse_json
from deepseekd.keys import KEY_VERIFIER, LIFECYCLE, SETTINGS

log = logging.getLogger("deepseekd.http")

REQUEST_ID = web.RequestKey("request_id", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_RID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take a sane ``X-Request-Id`` from the client or make one; echo it on the response."""
    incoming = request.headers.get("X-Request-Id", "")
    rid = incoming if _RID_RE.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = rid
    start = time.monotonic()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        if request.path not in OPEN_PATHS:
            log.info(
                "request",
                extra={"request_id": rid, "method": request.method, "route": _route(request),
                       "status": status, "duration_ms": round((time.monotonic() - start) * 1e3, 1)},
            )


def _route(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves in OpenAI's error shape; unexpected ones are logged, not leaked."""
    try:
        return await handler(request)
    except APIError as exc:
        resp = exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {
            404: f"no route {request.method} {request.path}",
            405: f"method {request.method} is not allowed on {request.path}",
            413: f"request body too large: the limit is {request.app[SETTINGS].server.max_body_bytes} bytes",
        }.get(exc.status, exc.reason)
        resp = APIError(exc.status, message, code=_HTTP_CODES.get(exc.status)).response()
        if exc.status == 405 and "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
    except ConnectionResetError:
        raise  # the client left; there is no one to answer
    except Exception:
        log.exception("internal error", extra={"request_id": request.get(REQUEST_ID)})
        resp = APIError(500, "internal server error", code="internal_error").response()
    return resp


@web.middleware
async def lifecycle_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count requests in flight for the drain; refuse new work once draining."""
    if request.path in OPEN_PATHS:
        return await handler(request)
    life = request.app[LIFECYCLE]
    if life.draining:
        raise unavailable("the service is shutting down", code="shutting_down",
                          retry_after=30)
    life.enter()
    try:
        return await handler(request)
    finally:
        life.leave()


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer API key on everything but the health probes."""
    if request.path in OPEN_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'",
                       code="missing_api_key", headers={"WWW-Authenticate": "Bearer"})
    if not request.app[KEY_VERIFIER].verify(token.strip()):
        raise APIError(401, "invalid API key", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object: 415 for another content type, 413 past the size limit."""
    if request.content_type != "application/json":
        raise APIError(
            415,
            f"Content-Type must be application/json, got '{request.content_type or 'none'}'",
            code="unsupported_media_type",
        )
    raw = await request.read()  # aiohttp enforces client_max_size and raises 413
    return parse_json(raw)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: every response, streamed ones included, names its request."""
    if REQUEST_ID in request:
        response.headers.setdefault("X-Request-Id", request[REQUEST_ID])


MIDDLEWARES = [request_id_middleware, error_middleware, lifecycle_middleware, auth_middleware]
