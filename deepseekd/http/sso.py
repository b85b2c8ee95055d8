"""Single sign-on routes: the button's target (off to the provider), the provider's
callback (back with a session, or a clear page saying why not), and an admin's second step
(the ticket plus this daemon's TOTP code)."""

from __future__ import annotations

import html

from aiohttp import web
from pydantic import Field

from deepseekd.domain.errors import AuthFailed, Unavailable
from deepseekd.http.body import StrictBody, body_of
from deepseekd.http.errors import APIError
from deepseekd.http.session_cookies import admin_session_answer, set_admin_cookie, set_web_cookie
from deepseekd.http.state import SETTINGS, SSO

BINDING_COOKIE = "deepseekd_sso"
"""Binds a pending sign-in to the browser that started it. SameSite=Lax: it must come back
on the provider's top-level redirect to the callback."""
CALLBACK_PATH = "/auth/oidc"


async def sso_config(request: web.Request) -> web.Response:
    """Whether the pages show a "Sign in with ..." button, and its words."""
    sso = request.app[SSO]
    return web.json_response({"enabled": sso.enabled, "label": sso.label if sso.enabled else None})


def _configured(request: web.Request) -> None:
    if not request.app[SSO].enabled:
        raise APIError(
            404,
            "single sign-on is not configured on this server ([auth.oidc])",
            code="sso_not_configured",
        )


async def start(request: web.Request) -> web.Response:
    """Off to the provider (``?to=chat`` or ``?to=admin``)."""
    _configured(request)
    target = request.query.get("to", "chat")
    try:
        url, binding = await request.app[SSO].start(target)
    except Unavailable as exc:
        return _page(exc.message.partition(": ")[2] or exc.message, 503, target)
    resp = web.HTTPFound(url)
    resp.set_cookie(
        BINDING_COOKIE,
        binding,
        httponly=True,
        samesite="Lax",
        path=CALLBACK_PATH,
        secure=request.secure,
        max_age=600,
    )
    raise resp


async def callback(request: web.Request) -> web.Response:
    """Back from the provider: a session and on to the page, or a page saying why not."""
    _configured(request)
    sso = request.app[SSO]
    params = {k: v for k, v in request.query.items() if isinstance(v, str)}
    try:
        signed = await sso.finish(params, request.cookies.get(BINDING_COOKIE), request.remote or "")
    except Unavailable as exc:
        return _page(exc.message.partition(": ")[2] or exc.message, 503, "chat")
    except AuthFailed as exc:
        return _page(exc.message, 401, "chat")
    if signed.ticket is not None:  # the console asks for this daemon's TOTP code next
        resp = web.HTTPFound(f"/admin#sso-ticket={signed.ticket}")
    elif signed.target == "admin":
        resp = web.HTTPFound("/admin")
        set_admin_cookie(resp, signed.token or "", request)
    else:  # a chat session; an auditor's opens the console's auditor view
        resp = web.HTTPFound("/admin" if signed.target == "auditor" else "/")
        set_web_cookie(resp, signed.token or "", request)
    resp.del_cookie(BINDING_COOKIE, path=CALLBACK_PATH)
    raise resp


class TicketLogin(StrictBody):
    ticket: str = Field(min_length=1, max_length=16384)
    totp: str = Field(min_length=1, max_length=16)


async def ticket_login(request: web.Request) -> web.Response:
    """An admin back from the provider: the ticket plus this daemon's TOTP code."""
    body = body_of(request, TicketLogin)
    token, who = await request.app[SSO].redeem(body.ticket, body.totp, request.remote or "")
    return admin_session_answer(request, token, who)


async def end_session_url(request: web.Request, token: str | None) -> str | None:
    """Where a logout sends the browser next: the provider's end-session page, for a
    session opened through it."""
    base = request.app[SETTINGS].auth.oidc.redirect_url.removesuffix("/auth/oidc/callback")
    return await request.app[SSO].logout_url(token, base + "/")


def _page(message: str, status: int, target: str) -> web.Response:
    back = "/admin" if target == "admin" else "/"
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>Sign-in not completed</title></head><body>"
        f"<h1>Sign-in not completed</h1><p id=reason>{html.escape(message)}</p>"
        f'<p><a href="{back}">Back to the sign-in page</a></p></body></html>'
    )
    return web.Response(text=body, status=status, content_type="text/html")
