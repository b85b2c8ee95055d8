"""The pages (chat at /, console at /admin, files under /static) and browser sessions."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from pydantic import Field

from deepseekd.api.admin import _Strict
from deepseekd.api.errors import APIError
from deepseekd.api.middlewares import IDENTITY, QUOTA_STATE, SESSION_TOKEN, WEB_COOKIE, read_json
from deepseekd.api.schemas import validate
from deepseekd.keys import ACCOUNTS, SETTINGS
from deepseekd.security.apikeys import csrf_token
from deepseekd.store.accounts import AuthFailed

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
routes = web.RouteTableDef()


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / name, headers={"Content-Type": "text/html; charset=utf-8"})


@routes.get("/")
async def chat_page(request: web.Request) -> web.FileResponse:
    return _page("chat.html")


@routes.get("/admin")
async def admin_page(request: web.Request) -> web.FileResponse:
    return _page("admin.html")


class WebLogin(_Strict):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


@routes.post("/auth/login")
async def login(request: web.Request) -> web.Response:
    body = validate(WebLogin, await read_json(request))
    try:
        token, who = await request.app[ACCOUNTS].web_login(body.username, body.password)
    except AuthFailed:
        raise APIError(401, AuthFailed.PUBLIC_MESSAGE, code="login_failed") from None
    settings = request.app[SETTINGS]
    resp = web.json_response({
        "user": who.name, "role": who.role, "csrf_token": csrf_token(token),
        "idle_timeout_s": settings.auth.web_session_idle_minutes * 60})
    resp.set_cookie(WEB_COOKIE, token, httponly=True, samesite="Strict", path="/",
                    secure=request.secure)
    return resp


@routes.get("/auth/session")
async def session(request: web.Request) -> web.Response:
    """Who is calling and today's quota; for a reloaded page also its CSRF token."""
    who = request[IDENTITY]
    token = request.get(SESSION_TOKEN)
    state = request.get(QUOTA_STATE)
    quota = ({"limit": state.limit, "remaining": state.remaining, "reset_at": state.reset_at}
             if state is not None else None)
    return web.json_response({
        "user": who.name, "role": who.role,
        "csrf_token": csrf_token(token) if token is not None else None,
        "idle_timeout_s": request.app[SETTINGS].auth.web_session_idle_minutes * 60,
        "quota": quota})


@routes.post("/auth/logout")
async def logout(request: web.Request) -> web.Response:
    token = request.get(SESSION_TOKEN)
    if token is not None:
        await request.app[ACCOUNTS].logout(token)
    resp = web.json_response({"logged_out": True})
    resp.del_cookie(WEB_COOKIE, path="/")
    return resp


STATIC_FILES = {p.name: p for p in (WEB_DIR / "static").iterdir() if p.is_file()}
"""The shipped files, fixed when the package loads: nothing else under /static is served."""


@routes.get("/static/{filename}")
async def static_file(request: web.Request) -> web.FileResponse:
    """The pages' scripts and styles."""
    path = STATIC_FILES.get(request.match_info["filename"])
    if path is None:
        # Raised here (not by FileResponse, which answers a bare 404 after the middlewares)
        # so a missing file gets the same JSON error as any other route.
        raise web.HTTPNotFound()
    return web.FileResponse(path)
