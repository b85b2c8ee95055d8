"""Security checks not covered elsewhere, as tables over the route table: CSRF on every
state-changing browser route, session fixation, cookie flags, security headers on every
kind of response.

Covered elsewhere: TOTP replay and lockout (test_admin.py), key revocation at once
(test_admin.py, e2e/test_users.py), no secret or content in logs (test_observability.py,
e2e/test_zz_shutdown.py), TLS cookies and mTLS (test_tls.py).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from deepseekd.http.routes import ACCESS as ROUTES
from deepseekd.http.middleware.auth import ADMIN_COOKIE, SAFE_METHODS, WEB_COOKIE
from deepseekd.http.middleware.headers import CSP
from deepseekd.http.state import ACCOUNTS
from deepseekd.security.apikeys import csrf_token

from tests.api.helpers import CHAT, CHAT_BODY, code, error, ok_json, secret_of

pytestmark = pytest.mark.reliability

MakeDaemon = Any
FakeClock = Any

STATE_CHANGING = sorted((m, p) for (m, p), rule in ROUTES.items()
                        if m not in SAFE_METHODS and rule.roles)
HARMLESS = {"name": "ghost", "key_id": "999999", "id": "999999",  # break-glass ids
            "conversation_id": "00000000-0000-4000-8000-000000000000",
            "turn_id": "00000000-0000-4000-8000-000000000000"}
BODIES = {
    ("POST", "/v1/chat/completions"): CHAT_BODY,
    ("POST", "/v1/completions"): {"prompt": "hi", "max_tokens": 1},
    ("POST", "/chat"): {"prompt": "hi", "max_tokens": 1},
    ("PATCH", "/v1/conversations/{conversation_id}"): {"title": "x"},
    ("POST", "/admin/api/users"): {"name": "csrfvictim", "role": "user"},
    ("PATCH", "/admin/api/users/{name}"): {"daily_request_limit": 1},
    ("PATCH", "/admin/api/settings"): {"quota.daily_requests": 0},
    ("POST", "/admin/api/users/{name}/keys"): {"label": "csrf"},
    ("PUT", "/admin/api/notice"): {"text": ""},
    ("PUT", "/admin/api/presets/{name}"): {"text": "Be brief."},
    ("POST", "/auth/notice"): {"version": 1},
    ("PUT", "/v1/conversations/{conversation_id}/turns/{turn_id}/feedback"): {"rating": "up"},
}


def _path(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: HARMLESS[m.group(1)], template)


async def _sessions(d: Any, clock: FakeClock, auditor: bool = False) -> tuple[str, str]:
    """A browser session of the user 'browser' (an auditor's for the auditor's routes) and
    an admin console session, as cookies."""
    accounts = d.app[ACCOUNTS]
    root = await accounts.create_user("root", "admin")
    web_user = await accounts.create_user("browser", "auditor" if auditor else "user")
    c = d.client
    web = await ok_json(await c.post("/auth/login", json={"username": "browser",
                                                          "password": web_user.password}))
    web_token = c.session.cookie_jar.filter_cookies(c.make_url("/"))[WEB_COOKIE].value
    assert web["csrf_token"] == csrf_token(web_token)
    admin = await ok_json(await c.post("/admin/api/login", json={
        "username": "root", "password": root.password,
        "totp": code(secret_of(root.totp_uri), clock())}))
    c.session.cookie_jar.clear()
    return web_token, admin["token"]


def test_the_table_covers_every_state_changing_route() -> None:
    assert len(STATE_CHANGING) >= 15
    kinds = {p.startswith("/admin/") for _, p in STATE_CHANGING}
    assert kinds == {True, False}


@pytest.mark.parametrize(("method", "path"), STATE_CHANGING,
                         ids=[f"{m} {p}" for m, p in STATE_CHANGING])
async def test_csrf_on_every_state_changing_cookie_route(make_daemon: MakeDaemon,
                                                         clock: FakeClock,
                                                         method: str, path: str) -> None:
    d = await make_daemon(clock=clock)
    web_token, admin_token = await _sessions(d, clock, auditor=path.startswith("/audit/"))
    token, name = ((admin_token, ADMIN_COOKIE) if path.startswith("/admin/")
                   else (web_token, WEB_COOKIE))
    cookie = {"Cookie": f"{name}={token}"}
    body = BODIES.get((method, path))
    url = _path(path)
    engine_calls = len(d.engine.request_ids)
    for bad in ({}, {"X-CSRF-Token": "0" * 64}, {"X-CSRF-Token": csrf_token(token + "x")}):
        resp = await d.client.request(method, url, json=body, headers={**cookie, **bad})
        await error(resp, 403, "csrf_failed")
    # Refused before the handler: nothing changed, nothing generated.
    assert len(d.engine.request_ids) == engine_calls
    assert "csrfvictim" not in [u.name for u in await d.app[ACCOUNTS].list_users()]
    # With the session's token the same request passes the CSRF gate.
    resp = await d.client.request(method, url, json=body,
                                  headers={**cookie, "X-CSRF-Token": csrf_token(token)})
    text = await resp.text()
    assert resp.status not in (401, 403), f"{resp.status} {text}"


async def test_session_fixation_is_not_possible(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    """A session id planted before login is never adopted; each login makes a new one, and
    logging out ends it."""
    d = await make_daemon(clock=clock)
    user = await d.app[ACCOUNTS].create_user("victim", "user")
    c = d.client
    planted = "dss-" + "a" * 43
    c.session.cookie_jar.update_cookies({WEB_COOKIE: planted})
    await ok_json(await c.post("/auth/login", json={"username": "victim",
                                                    "password": user.password}))
    first = c.session.cookie_jar.filter_cookies(c.make_url("/"))[WEB_COOKIE].value
    assert first != planted
    c.session.cookie_jar.clear()
    await error(await c.get("/auth/session", headers={"Cookie": f"{WEB_COOKIE}={planted}"}), 401)
    # Logging in again while holding a live session gives another session id.
    await ok_json(await c.post("/auth/login", json={"username": "victim",
                                                    "password": user.password},
                               headers={"Cookie": f"{WEB_COOKIE}={first}"}))
    second = c.session.cookie_jar.filter_cookies(c.make_url("/"))[WEB_COOKIE].value
    assert second not in (first, planted)
    c.session.cookie_jar.clear()
    await ok_json(await c.post("/auth/logout", headers={"Cookie": f"{WEB_COOKIE}={second}",
                                                        "X-CSRF-Token": csrf_token(second)}))
    await error(await c.get("/auth/session", headers={"Cookie": f"{WEB_COOKIE}={second}"}), 401)
    await ok_json(await c.get("/auth/session", headers={"Cookie": f"{WEB_COOKIE}={first}"}))


async def test_web_session_cookie_flags(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    user = await d.app[ACCOUNTS].create_user("flags", "user")
    resp = await d.client.post("/auth/login", json={"username": "flags",
                                                    "password": user.password})
    await ok_json(resp)
    (cookie,) = [h for h in resp.headers.getall("Set-Cookie") if h.startswith(WEB_COOKIE + "=")]
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path"} <= set(attrs)
    assert attrs["samesite"].lower() == "samesite=strict" and attrs["path"].lower() == "path=/"
    assert "expires" not in attrs and "max-age" not in attrs  # a session cookie: gone on exit
    assert "secure" not in attrs  # plain HTTP on loopback; test_tls.py checks Secure over TLS


SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


async def test_security_headers_on_every_kind_of_response(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    c, auth = d.client, d.auth
    responses = {
        "chat page": await c.get("/"),
        "admin page": await c.get("/admin"),
        "static": await c.get("/static/chat.js"),
        "static 404": await c.get("/static/nope.js"),
        "json": await c.get("/v1/models", headers=auth),
        "openapi": await c.get("/openapi.json"),
        "probe": await c.get("/readyz"),
        "401": await c.get("/v1/models"),
        "404": await c.get("/nope"),
        "405": await c.get(CHAT, headers=auth),
        "413": await c.post(CHAT, data=b"x" * (5 * 1024 * 1024), headers={
            **auth, "Content-Type": "application/json"}),
        "stream": await c.post(CHAT, json={**CHAT_BODY, "stream": True}, headers=auth),
    }
    for what, resp in responses.items():
        await resp.read()
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers.get(name) == value, (what, name, resp.headers.get(name))
        if not what.startswith("static"):  # the shipped files may be cached
            assert resp.headers.get("Cache-Control") in ("no-store", "no-cache"), what
