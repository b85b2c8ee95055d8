"""The pages (chat at /, console at /admin, files under /static) and browser sessions."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from pydantic import Field

from deepseekd.http import sso
from deepseekd.http.body import StrictBody, body_of
from deepseekd.http.middleware.auth import WEB_COOKIE
from deepseekd.http.session_cookies import set_web_cookie
from deepseekd.http.state import AUTH, IDENTITY, NOTICE, QUOTA_STATE, SESSION_TOKEN, SETTINGS
from deepseekd.security.apikeys import csrf_token

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / name, headers={"Content-Type": "text/html; charset=utf-8"})


async def chat_page(request: web.Request) -> web.FileResponse:
    return _page("chat.html")


async def admin_page(request: web.Request) -> web.FileResponse:
    return _page("admin.html")


class WebLogin(StrictBody):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


async def login(request: web.Request) -> web.Response:
    body = body_of(request, WebLogin)
    token, who = await request.app[AUTH].web_login(
        body.username, body.password, source=request.remote
    )
    settings = request.app[SETTINGS]
    resp = web.json_response(
        {
            "user": who.name,
            "role": who.role,
            "csrf_token": csrf_token(token),
            "idle_timeout_s": settings.auth.web_session_idle_minutes * 60,
            "password_change_required": who.password_change_required,
        }
    )
    set_web_cookie(resp, token, request)
    return resp


async def session(request: web.Request) -> web.Response:
    """Who is calling and today's quota; for a reloaded page also its CSRF token; and the
    acceptable-use notice the caller has still to accept (``notice``: null when none)."""
    who = request[IDENTITY]
    token = request.get(SESSION_TOKEN)
    state = request.get(QUOTA_STATE)
    quota = (
        {"limit": state.limit, "remaining": state.remaining, "reset_at": state.reset_at}
        if state is not None
        else None
    )
    return web.json_response(
        {
            "user": who.name,
            "role": who.role,
            "csrf_token": csrf_token(token) if token is not None else None,
            "idle_timeout_s": request.app[SETTINGS].auth.web_session_idle_minutes * 60,
            "quota": quota,
            "password_change_required": who.password_change_required,
            # 'local': the password is ours to change; 'ldap'/'oidc': the directory's.
            "account_source": who.account_source,
            "notice": await request.app[NOTICE].pending(who),
        }
    )


class PasswordChange(StrictBody):
    current_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=1, max_length=256)


async def change_password(request: web.Request) -> web.Response:
    """Change one's own password (the current one, then a new one of 12-128 characters);
    the caller's other sessions end."""
    body = body_of(request, PasswordChange)
    await request.app[AUTH].change_password(
        request[IDENTITY], body.current_password, body.new_password, request.get(SESSION_TOKEN)
    )
    return web.json_response({"changed": True})


async def logout(request: web.Request) -> web.Response:
    token = request.get(SESSION_TOKEN)
    if token is not None:
        await request.app[AUTH].logout(token, request[IDENTITY])
    # Signed in with the provider: the page goes on to sign out there too.
    provider = await sso.end_session_url(request, token)
    resp = web.json_response(
        {"logged_out": True, **({"end_session_url": provider} if provider else {})}
    )
    resp.del_cookie(WEB_COOKIE, path="/")
    return resp


STATIC_DIRS = {"": WEB_DIR / "static", "lib": WEB_DIR / "static" / "lib"}
STATIC_FILES = {
    f"{prefix}/{p.name}" if prefix else p.name: p
    for prefix, d in STATIC_DIRS.items()
    if d.is_dir()
    for p in d.iterdir()
    if p.is_file()
}
"""The shipped files, fixed when the package loads: nothing else under /static is served."""


async def static_file(request: web.Request) -> web.FileResponse:
    """The pages' scripts and styles."""
    return _static(request.match_info["filename"])


async def static_lib_file(request: web.Request) -> web.FileResponse:
    """The scripts both pages share."""
    return _static("lib/" + request.match_info["filename"])


def _static(name: str) -> web.FileResponse:
    path = STATIC_FILES.get(name)
    if path is None:
        # Raised here (not by FileResponse, which answers a bare 404 after the middlewares)
        # so a missing file gets the same JSON error as any other route.
        raise web.HTTPNotFound()
    return web.FileResponse(path)
