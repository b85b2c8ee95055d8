"""Request id, error shape, drain gate and authentication, in that order."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any, Awaitable, Callable

from aiohttp import web

from deepseekd.api.access import access_for
from deepseekd.api.errors import APIError, unavailable
from deepseekd.api.schemas import parse_json
from deepseekd.keys import (
    ACCOUNTS,
    CLOCK,
    INFERENCE,
    LIFECYCLE,
    METRICS,
    QUOTA,
    SETTINGS,
    TRACING,
)
from deepseekd.security.apikeys import csrf_matches
from deepseekd.security.tls import peer_common_name
from deepseekd.store.accounts import SESSION_PREFIX, AccountError, AuthFailed, Identity
from deepseekd.store.db import StoreUnavailable
from deepseekd.store.quota import QuotaState

log = logging.getLogger("deepseekd.http")

REQUEST_ID = web.RequestKey("request_id", str)
REQUEST_START = web.RequestKey("request_start", float)
"""time.monotonic() when the request arrived."""
IDENTITY = web.RequestKey("identity", Identity)
QUOTA_STATE = web.RequestKey("quota_state", QuotaState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_RID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes: not logged, not gated by drain


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take a sane ``X-Request-Id`` from the client or make one; echo it on the response."""
    incoming = request.headers.get("X-Request-Id", "")
    rid = incoming if _RID_RE.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = rid
    start = request[REQUEST_START] = time.monotonic()
    status = 500
    tracer = request.app[TRACING].tracer
    span = tracer.start_span(f"{request.method} {_route(request)}") if tracer else None
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        if span is not None:
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("http.route", _route(request))
            span.set_attribute("http.response.status_code", status)
            span.set_attribute("deepseekd.request_id", rid)
            span.end()
        elapsed = time.monotonic() - start
        route = _route(request)
        request.app[METRICS].observe_http(route, request.method, status, elapsed)
        if request.path not in OPEN_PATHS:
            who = request.get(IDENTITY)
            log.info(
                "request",
                extra={"request_id": rid, "method": request.method, "route": route,
                       "status": status, "duration_ms": round(elapsed * 1e3, 1),
                       "user_id": who.user_id if who else None},
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
        if exc.status == 401:
            request.app[METRICS].auth_failures.inc()
        elif exc.code == "daily_quota_exceeded":
            request.app[METRICS].quota_rejections.inc()
        if exc.status == 401 and "WWW-Authenticate" not in resp.headers:
            resp.headers["WWW-Authenticate"] = "Bearer"  # RFC 7235: every 401 names a scheme
    except StoreUnavailable as exc:
        log.error("database unavailable", extra={"request_id": request.get(REQUEST_ID),
                                                 "error": str(exc)})
        resp = unavailable(str(exc), code="database_unavailable", retry_after=5).response()
    except AccountError as exc:
        resp = APIError(exc.status, str(exc), param=exc.field,
                        code="invalid_value" if exc.status == 400 else None).response()
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


ADMIN_COOKIE = "deepseekd_admin"
WEB_COOKIE = "deepseekd_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_TOKEN = web.RequestKey("session_token", str)
"""The cookie that authenticated this request, if a cookie did."""


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "malformed Authorization header: use 'Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


async def _identify(request: web.Request) -> tuple[Identity | None, str | None]:
    """Who is calling, and the session cookie that proved it (cookie calls need CSRF)."""
    accounts = request.app[ACCOUNTS]
    token = _bearer(request)
    if token is not None:
        if token.startswith(SESSION_PREFIX):  # scripts may hold an admin session as a bearer
            return await accounts.authenticate_session(token, "admin"), None
        return await accounts.authenticate_key(token), None
    admin_cookie = request.cookies.get(ADMIN_COOKIE)
    if admin_cookie and request.path.startswith("/admin/"):
        return await accounts.authenticate_session(admin_cookie, "admin"), admin_cookie
    web_cookie = request.cookies.get(WEB_COOKIE)
    if web_cookie and not request.path.startswith("/admin/"):
        return await accounts.authenticate_session(web_cookie, "web"), web_cookie
    if request.app[SETTINGS].server.tls.client_cert_users and request.transport is not None:
        # Only a certificate the handshake verified against client_ca gets here.
        name = peer_common_name(request.transport.get_extra_info("peercert"))
        if name:
            return await accounts.authenticate_user_name(name, via="client_cert"), None
    return None, None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate, authorize against the route table, check the admin second factor."""
    resource = request.match_info.route.resource
    if resource is None:  # 404/405: nothing to protect; the router answers
        return await handler(request)
    access = access_for(request.method, resource.canonical)
    if access is None:
        log.error("route missing from the access table",
                  extra={"method": request.method, "route": resource.canonical})
        raise APIError(403, "forbidden", code="forbidden")
    if not access.roles:
        return await handler(request)
    who, cookie = await _identify(request)
    if who is None and "Authorization" not in request.headers and cookie is None:
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'",
                       code="missing_api_key", headers={"WWW-Authenticate": "Bearer"})
    if who is None:
        raise APIError(401, "invalid, revoked or expired credentials", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    request[IDENTITY] = who
    if cookie is not None:
        request[SESSION_TOKEN] = cookie
        if request.method not in SAFE_METHODS and not csrf_matches(
                cookie, request.headers.get("X-CSRF-Token")):
            raise APIError(403, "missing or wrong X-CSRF-Token header for a cookie session",
                           code="csrf_failed")
    if who.role not in access.roles:
        raise APIError(403, f"the '{who.role}' role may not use {request.method} "
                       f"{resource.canonical}", code="forbidden")
    if access.second_factor and who.via != "session":
        code = request.headers.get("X-TOTP")
        if not code:
            raise APIError(401, "admin calls need a second factor: open a session with POST "
                           "/admin/api/login, or send an X-TOTP header", code="totp_required")
        try:
            await request.app[ACCOUNTS].verify_second_factor(who, code)
        except AuthFailed:
            raise APIError(401, AuthFailed.PUBLIC_MESSAGE, code="second_factor_failed") from None
    if access.quota:
        request.app[INFERENCE].engine()  # a 503 while warming up must not cost quota
        state = await request.app[QUOTA].consume(who)
        request[QUOTA_STATE] = state
        if not state.allowed:
            what = "requests" if state.reason == "requests" else "tokens"
            raise APIError(
                429,
                f"daily quota of {what} reached; it resets at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(state.reset_at))}",
                code="daily_quota_exceeded",
                headers={"Retry-After": str(max(1, state.reset_at - int(request.app[CLOCK]())))},
            )
    else:
        request[QUOTA_STATE] = await request.app[QUOTA].peek(who)
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


CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
       "object-src 'none'")


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: every response, streamed ones included, names its request
    and, for a known caller, their daily quota."""
    if REQUEST_ID in request:
        response.headers.setdefault("X-Request-Id", request[REQUEST_ID])
    h = response.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("X-Frame-Options", "DENY")
    if not request.path.startswith("/static/"):
        h.setdefault("Cache-Control", "no-store")  # answers and user data stay off disk caches
    state = request.get(QUOTA_STATE)
    if state is not None:
        response.headers["X-RateLimit-Limit"] = str(state.limit)
        response.headers["X-RateLimit-Remaining"] = str(state.remaining)
        response.headers["X-RateLimit-Reset"] = str(state.reset_at)


MIDDLEWARES = [request_id_middleware, error_middleware, lifecycle_middleware, auth_middleware]
