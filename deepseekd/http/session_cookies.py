"""The session cookies, set in one place: HttpOnly, SameSite=Strict, Secure over TLS; the
console's on /admin only. A sign-in by password, by the provider, or by a ticket sets
the same ones."""

from __future__ import annotations

from aiohttp import web

from deepseekd.domain.identity import Identity
from deepseekd.http.middleware.auth import ADMIN_COOKIE, WEB_COOKIE
from deepseekd.http.state import SETTINGS
from deepseekd.security.apikeys import csrf_token


def set_admin_cookie(resp: web.StreamResponse, token: str, request: web.Request) -> None:
    resp.set_cookie(
        ADMIN_COOKIE, token, httponly=True, samesite="Strict", path="/admin", secure=request.secure
    )


def set_web_cookie(resp: web.StreamResponse, token: str, request: web.Request) -> None:
    resp.set_cookie(
        WEB_COOKIE, token, httponly=True, samesite="Strict", path="/", secure=request.secure
    )


def admin_session_answer(request: web.Request, token: str, who: Identity) -> web.Response:
    """An admin session opened: the token (for API clients), its CSRF token and the idle
    timeout (for the console), and the cookie."""
    idle = request.app[SETTINGS].auth.session_idle_minutes * 60
    resp = web.json_response(
        {"token": token, "user": who.name, "idle_timeout_s": idle, "csrf_token": csrf_token(token)}
    )
    set_admin_cookie(resp, token, request)
    return resp
