"""Authentication (API key, session cookie, admin session bearer, client certificate),
authorization against the route table, CSRF for cookie sessions, and the admin second
factor on every admin call."""

from __future__ import annotations

import logging

from aiohttp import web

from deepseekd.domain.errors import AuthFailed
from deepseekd.domain.identity import Identity
from deepseekd.http.access import Access
from deepseekd.http.errors import APIError, unauthorized
from deepseekd.http.middleware.types import Handler
from deepseekd.http.state import (
    AUTH,
    BREAKGLASS,
    IDENTITY,
    NOTICE,
    QUOTA,
    QUOTA_STATE,
    ROUTES,
    SESSION_TOKEN,
    SETTINGS,
)
from deepseekd.security.apikeys import SESSION_PREFIX, csrf_matches
from deepseekd.security.tls import peer_common_name
from deepseekd.services.auth import with_client

log = logging.getLogger("deepseekd.http")

ADMIN_COOKIE = "deepseekd_admin"
WEB_COOKIE = "deepseekd_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHANGE_PASSWORD = frozenset(
    {("GET", "/auth/session"), ("POST", "/auth/password"), ("POST", "/auth/logout")}
)
"""What a session opened with a password an admin reset may do: change it (or leave)."""


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("malformed Authorization header: use 'Bearer <key>'", "invalid_api_key")
    return token.strip()


async def _identify(request: web.Request) -> tuple[Identity | None, str | None]:
    """Who is calling, and the session cookie that proved it (cookie calls need CSRF)."""
    auth = request.app[AUTH]
    token = _bearer(request)
    if token is not None:
        if token.startswith(SESSION_PREFIX):  # scripts may hold an admin session as a bearer
            return await auth.authenticate_session(token, "admin"), None
        return await auth.authenticate_key(token), None
    admin_cookie = request.cookies.get(ADMIN_COOKIE)
    if admin_cookie and request.path.startswith("/admin/"):
        return await auth.authenticate_session(admin_cookie, "admin"), admin_cookie
    web_cookie = request.cookies.get(WEB_COOKIE)
    if web_cookie and not request.path.startswith("/admin/"):
        return await auth.authenticate_session(web_cookie, "web"), web_cookie
    if request.app[SETTINGS].server.tls.client_cert_users and request.transport is not None:
        # Only a certificate the handshake verified against client_ca gets here.
        name = peer_common_name(request.transport.get_extra_info("peercert"))
        if name:
            return await auth.authenticate_user_name(name, via="client_cert"), None
    return None, None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    if resource is None:  # 404/405: nothing to protect; the router answers
        return await handler(request)
    method = "GET" if request.method == "HEAD" else request.method
    route = request.app[ROUTES].get((method, resource.canonical))
    if route is None:
        log.error(
            "route missing from the route table",
            extra={"method": request.method, "route": resource.canonical},
        )
        raise APIError(403, "forbidden", code="forbidden")
    access = route.access
    if not access.roles:
        return await handler(request)
    who, cookie = await _identify(request)
    if who is None and "Authorization" not in request.headers and cookie is None:
        raise unauthorized("missing API key: send 'Authorization: Bearer <key>'", "missing_api_key")
    if who is None:
        raise unauthorized("invalid, revoked or expired credentials", "invalid_api_key")
    who = await request.app[BREAKGLASS].elevate(with_client(who, request.remote))
    request[IDENTITY] = who
    if cookie is not None:
        request[SESSION_TOKEN] = cookie
        if request.method not in SAFE_METHODS and not csrf_matches(
            cookie, request.headers.get("X-CSRF-Token")
        ):
            raise APIError(
                403, "missing or wrong X-CSRF-Token header for a cookie session", code="csrf_failed"
            )
    if who.password_change_required and (method, resource.canonical) not in CHANGE_PASSWORD:
        raise APIError(
            403,
            "set a new password first: this one was set by an admin (POST /auth/password)",
            code="password_change_required",
        )
    if who.role not in access.roles:
        raise APIError(
            403,
            f"the '{who.role}' role may not use {request.method} {resource.canonical}",
            code="forbidden",
        )
    if access.second_factor and who.via != "session":
        code = request.headers.get("X-TOTP")
        if not code:
            raise unauthorized(
                "admin calls need a second factor: open a session with POST "
                "/admin/api/login, or send an X-TOTP header",
                "totp_required",
            )
        try:
            await request.app[AUTH].verify_second_factor(who, code, request.remote)
        except AuthFailed as exc:
            if exc.locked_until is None:
                raise unauthorized(AuthFailed.PUBLIC_MESSAGE, "second_factor_failed") from None
            raise
    await _last_checks(request, who, access)
    return await handler(request)


async def _last_checks(request: web.Request, who: Identity, access: Access) -> None:
    """An inference route from the chat page needs the acceptable-use notice accepted (API
    keys are programs, which cannot read a dialog: see README, Web pages); any other route
    learns today's quota (inference routes are counted, and say so, when admitted)."""
    if access.quota:
        if who.via == "web_session":
            await request.app[NOTICE].require_accepted(who)
    else:
        request[QUOTA_STATE] = await request.app[QUOTA].peek(who)
