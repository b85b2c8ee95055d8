"""Who may call what: every registered route × every kind of caller against access.ACCESS,
then the daily quota as a client sees it (headers, 429, warmup, tokens, concurrency) and
who reads /metrics."""

from __future__ import annotations

import asyncio
import itertools
import re
import tempfile
from pathlib import Path
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from deepseekd.http import routes as access
from deepseekd.daemon import build_app
from deepseekd.config import load_settings
from deepseekd.security.keyring import create_master_key
from deepseekd.http.state import ACCOUNTS

from tests.api.helpers import CHAT, CHAT_BODY, bearer, error, login, ok_json, secret_of
from tests.fakes import FakeEngine

MakeDaemon = Any  # tests/api/conftest.py: async (engine=, env=, ready=, clock=) -> Daemon
FakeClock = Any  # tests/api/conftest.py: callable, .now, .advance(seconds)

BAD_KEY = "dsk-not-a-real-key"


# --------------------------------------------------------------------------- the route table


def _registered(app: web.Application) -> set[tuple[str, str]]:
    """(method, canonical path) of every route the app serves; HEAD twins of GET skipped."""
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.method != "HEAD" and r.resource is not None}


def _unstarted_app() -> web.Application:
    with tempfile.TemporaryDirectory() as tmp:  # nothing is written: the app never starts
        settings = load_settings(path=None, env={"DEEPSEEKD_DATA_DIR": tmp})
        create_master_key(Path(tmp) / "keys", 1)
        return build_app(settings, lambda: FakeEngine(), "fake-model")


REGISTERED = _registered(_unstarted_app())
# The union, so a route missing on either side still gets its own failing case.
ALL_ROUTES = sorted(REGISTERED | set(access.ACCESS), key=lambda r: (r[1], r[0]))


def test_route_table_matches_the_router() -> None:
    app = _unstarted_app()
    registered = _registered(app)
    assert registered - set(access.ACCESS) == set(), "registered routes missing from ROUTES"
    assert set(access.ACCESS) - registered == set(), "ROUTES entries that are not registered"
    # Every HEAD route is the twin of a GET one, which is what access_for assumes.
    heads = {r.resource.canonical for r in app.router.routes() if r.method == "HEAD"}
    assert heads <= {path for method, path in registered if method == "GET"}
    for path in heads:
        assert access.access_for("HEAD", path) == access.access_for("GET", path)


def test_route_table_shape() -> None:
    assert all(not a.second_factor for a in access.ACCESS.values() if not a.roles)
    assert all(a.roles == {"admin"} for a in access.ACCESS.values() if a.second_factor)
    assert all(a.roles <= {"admin", "user", "auditor", "metrics"} for a in access.ACCESS.values())
    quota = {k for k, a in access.ACCESS.items() if a.quota}
    assert quota == {("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
                     ("POST", "/v1/responses"), ("POST", "/chat")}


# --------------------------------------------------------------------------- route × caller

CALLERS = ["none", "bad_key", "user", "auditor", "metrics", "admin_key", "admin_session"]
CALLER_ROLE = {"user": "user", "auditor": "auditor", "metrics": "metrics",
               "admin_key": "admin", "admin_session": "admin"}
_fresh = itertools.count()


@dataclass
class World:
    d: Any
    keys: dict[str, str]
    session: str
    root_password: str
    root_secret: str
    target: str
    target_key_id: int


async def _world(make_daemon: MakeDaemon, clock: FakeClock) -> World:
    d = await make_daemon(clock=clock)
    accounts = d.app[ACCOUNTS]
    root = await accounts.create_user("root", "admin")
    keys = {"admin_key": root.api_key}
    for role in ("user", "auditor", "metrics"):
        keys[role] = (await accounts.create_user(f"a-{role}", role)).api_key
    # The victim of the path parameters: an admin, so a TOTP reset succeeds too.
    await accounts.create_user("target", "admin")
    key_id = (await accounts.list_keys("target"))[0].id
    secret = secret_of(root.totp_uri)
    assert root.password is not None
    session = await login(d.client, "root", root.password, secret, clock)
    return World(d, keys, session, root.password, secret, "target", key_id)


# Routes whose allowed callers must succeed with the fixtures above (every path parameter
# names something that exists); on any other route an allowed caller may still get a 4xx
# (a placeholder id that names nothing), never 401/403 nor a 5xx.
EXPECT_2XX = {
    ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
    ("POST", "/v1/responses"), ("POST", "/chat"), ("GET", "/metrics"),
    ("POST", "/admin/api/logout"),
    ("GET", "/admin/api/users"), ("POST", "/admin/api/users"),
    ("PATCH", "/admin/api/users/{name}"), ("POST", "/admin/api/users/{name}/disable"),
    ("POST", "/admin/api/users/{name}/totp"), ("GET", "/admin/api/users/{name}/keys"),
    ("POST", "/admin/api/users/{name}/keys"), ("DELETE", "/admin/api/keys/{key_id}"),
    ("POST", "/admin/api/users/{name}/erase"), ("GET", "/admin/api/users/{name}/export"),
    ("POST", "/admin/api/keys/rotate"), ("GET", "/v1/conversations"), ("GET", "/v1/me/export"),
    ("DELETE", "/v1/conversations"),  # deletes the caller's own (none here): {"deleted": 0}
    ("GET", "/audit/api/events"), ("GET", "/audit/api/verify"), ("GET", "/audit/api/export"),
    ("GET", "/audit/api/access-review"), ("GET", "/admin/api/breakglass"),
    ("GET", "/audit/api/breakglass"),
    ("GET", "/admin/api/notice"), ("PUT", "/admin/api/notice"), ("GET", "/admin/api/feedback"),
    ("GET", "/admin/api/usage/summary"),
    ("POST", "/admin/api/users/import"),  # a dry run (the default) of a one-row file
    ("GET", "/v1/presets"), ("GET", "/admin/api/presets"), ("PUT", "/admin/api/presets/{name}"),
}
_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")
PLACEHOLDER = "00000000-0000-4000-8000-000000000000"


def _body(method: str, path: str) -> Any:
    if path == "/admin/api/users" and method == "POST":
        return {"name": f"fresh-{next(_fresh)}", "role": "user"}
    return {
        ("POST", "/v1/chat/completions"): CHAT_BODY,
        ("POST", "/v1/completions"): {"prompt": "hello there", "max_tokens": 1},
        ("POST", "/v1/responses"): {"input": "hello there", "max_output_tokens": 1},
        ("POST", "/chat"): {"prompt": "hello there", "max_tokens": 1},
        ("POST", "/admin/api/login"): {},  # 400: the credentials are in the body
        ("PATCH", "/admin/api/users/{name}"): {"daily_request_limit": 10},
        ("POST", "/admin/api/users/{name}/keys"): {"label": "matrix"},
        ("PUT", "/admin/api/notice"): {"text": "For work use only."},
        ("PUT", "/admin/api/presets/{name}"): {"text": "Be brief."},
        ("POST", "/auth/notice"): {"version": 1},  # 409: no notice is in force
        ("PUT", "/v1/conversations/{conversation_id}/turns/{turn_id}/feedback"): {"rating": "up"},
    }.get((method, path))


async def _call(w: World, clock: FakeClock, method: str, canonical: str, caller: str) -> Any:
    known = {"name": w.target, "key_id": str(w.target_key_id)}
    path = _PARAM.sub(lambda m: known.get(m.group(1), PLACEHOLDER), canonical)
    if canonical == "/static/{filename}":
        path = "/static/markdown.js"
    headers: dict[str, str] = {}
    if caller == "bad_key":
        headers = bearer(BAD_KEY)
    elif caller == "admin_session":
        token = w.session
        if (method, canonical) == ("POST", "/admin/api/logout"):
            clock.advance(30)  # a fresh TOTP step for a throwaway session
            token = await login(w.d.client, "root", w.root_password, w.root_secret, clock)
        headers = bearer(token)
    elif caller != "none":
        headers = bearer(w.keys[caller])
    assert not w.d.client.session.cookie_jar, "a cookie would authenticate 'none'"
    body = _body(method, canonical)
    kwargs: dict[str, Any] = {"json": body} if body is not None else {}
    if canonical == "/admin/api/users/import":
        kwargs = {"data": "name,role\nmatrixrow,user\n"}
        headers = {**headers, "Content-Type": "text/csv"}
    resp = await w.d.client.request(method, path, headers=headers, **kwargs)
    await resp.read()
    return resp


@pytest.mark.parametrize("route", ALL_ROUTES, ids=[f"{m} {p}" for m, p in ALL_ROUTES])
async def test_route_access_matrix(make_daemon: MakeDaemon, clock: FakeClock,
                                   route: tuple[str, str]) -> None:
    method, canonical = route
    assert route in REGISTERED, f"{method} {canonical} is in ROUTES but not registered"
    assert route in access.ACCESS, f"{method} {canonical} is registered but not in ROUTES"
    rule = access.ACCESS[route]
    w = await _world(make_daemon, clock)
    assert _registered(w.d.app) == REGISTERED
    for caller in CALLERS:
        resp = await _call(w, clock, method, canonical, caller)
        where = f"{method} {canonical} as {caller}: {resp.status} {await resp.text()}"
        if not rule.roles:
            assert resp.status not in (401, 403) and resp.status < 500, where
        elif caller in ("none", "bad_key"):
            err = await error(resp, 401, "missing_api_key" if caller == "none"
                              else "invalid_api_key")
            assert resp.headers.get("WWW-Authenticate") == "Bearer", where
            assert err["param"] is None
        elif CALLER_ROLE[caller] not in rule.roles:
            await error(resp, 403, "forbidden")
        elif caller == "admin_key" and rule.second_factor:
            await error(resp, 401, "totp_required")
        elif route in EXPECT_2XX:
            assert 200 <= resp.status < 300, where
        else:
            assert resp.status not in (401, 403) and resp.status < 500, where
    # The shared session was never ended: it still works on an admin route.
    resp = await w.d.client.get("/admin/api/users", headers=bearer(w.session))
    assert resp.status == 200, await resp.text()


async def test_unknown_route_is_404_for_anyone(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    await error(await d.client.get("/admin/api/nope"), 404, "not_found")
    await error(await d.client.get("/admin/api/nope", headers=bearer(BAD_KEY)), 404)


# --------------------------------------------------------------------------- quota over HTTP


def _rate(resp: Any) -> tuple[int, int, int]:
    h = resp.headers
    return (int(h["X-RateLimit-Limit"]), int(h["X-RateLimit-Remaining"]),
            int(h["X-RateLimit-Reset"]))


async def test_quota_headers_429_and_reset(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d = await make_daemon(clock=clock)
    q = await d.app[ACCOUNTS].create_user("quoted", "user", daily_request_limit=3)
    auth = bearer(q.api_key)
    chat = lambda: d.client.post(CHAT, json=CHAT_BODY, headers=auth)  # noqa: E731

    resp = await chat()
    await ok_json(resp)
    limit, remaining, reset = _rate(resp)
    assert (limit, remaining) == (3, 2)
    assert reset > clock() and reset - clock() <= 86400

    # Listing models is not counted, and says so.
    resp = await d.client.get("/v1/models", headers=auth)
    await ok_json(resp)
    assert _rate(resp) == (3, 2, reset)

    for expect in (1, 0):
        resp = await chat()
        await ok_json(resp)
        assert _rate(resp) == (3, expect, reset)

    resp = await chat()
    err = await error(resp, 429, "daily_quota_exceeded")
    assert "requests" in err["message"]
    assert _rate(resp) == (3, 0, reset)
    retry = resp.headers["Retry-After"]
    assert retry.isdigit() and 0 < int(retry) <= 86400
    assert len(d.engine.request_ids) == 1 + 3  # the warmup and the three admitted

    resp = await d.client.get("/v1/models", headers=auth)
    await ok_json(resp)
    assert _rate(resp) == (3, 0, reset)

    # Other users have their own count.
    resp = await d.client.post(CHAT, json=CHAT_BODY, headers=d.auth)
    await ok_json(resp)
    assert _rate(resp)[:2] == (500, 499)

    clock.now = reset + 1
    resp = await chat()
    await ok_json(resp)
    assert _rate(resp) == (3, 2, reset + 86400)


async def test_retry_after_follows_the_app_clock(make_daemon: MakeDaemon,
                                                 clock: FakeClock) -> None:
    clock.now = 1_600_000_000.0  # far from the real time
    d = await make_daemon(clock=clock)
    q = await d.app[ACCOUNTS].create_user("quoted", "user", daily_request_limit=0)
    resp = await d.client.post(CHAT, json=CHAT_BODY, headers=bearer(q.api_key))
    await error(resp, 429, "daily_quota_exceeded")
    reset = int(resp.headers["X-RateLimit-Reset"])
    assert int(resp.headers["Retry-After"]) == reset - int(clock())


async def test_warming_up_503_costs_no_quota(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    gate = asyncio.Event()
    d = await make_daemon(engine=FakeEngine(start_gate=gate), ready=False, clock=clock)
    q = await d.app[ACCOUNTS].create_user("early", "user", daily_request_limit=3)
    auth = bearer(q.api_key)
    for path, body in ((CHAT, CHAT_BODY), ("/chat", {"prompt": "hi", "max_tokens": 1})):
        resp = await d.client.post(path, json=body, headers=auth)
        await error(resp, 503, "warming_up")
        assert "X-RateLimit-Remaining" not in resp.headers
    gate.set()
    await d.wait_ready()
    resp = await d.client.post(CHAT, json=CHAT_BODY, headers=auth)
    await ok_json(resp)
    assert _rate(resp)[:2] == (3, 2)


async def test_token_quota(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d = await make_daemon(clock=clock)
    q = await d.app[ACCOUNTS].create_user("wordy", "user", daily_token_limit=10)
    auth = bearer(q.api_key)
    # 5 prompt tokens + 8 generated = 13 > 10: admitted while under, counted when done.
    body = await ok_json(await d.client.post(
        CHAT, json={**CHAT_BODY, "max_tokens": 8}, headers=auth))
    assert body["usage"]["total_tokens"] == 13
    resp = await d.client.post(CHAT, json=CHAT_BODY, headers=auth)
    err = await error(resp, 429, "daily_quota_exceeded")
    assert "tokens" in err["message"]
    assert int(resp.headers["Retry-After"]) > 0
    # Not counted routes still answer.
    await ok_json(await d.client.get("/v1/models", headers=auth))
    # The next quota day starts from zero.
    clock.now = int(resp.headers["X-RateLimit-Reset"]) + 1
    await ok_json(await d.client.post(CHAT, json=CHAT_BODY, headers=auth))


async def test_token_quota_streamed(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d = await make_daemon(clock=clock)
    q = await d.app[ACCOUNTS].create_user("streamer", "user", daily_token_limit=10)
    auth = bearer(q.api_key)
    resp = await d.client.post(CHAT, json={**CHAT_BODY, "max_tokens": 8, "stream": True,
                                           "stream_options": {"include_usage": True}},
                               headers=auth)
    text = await resp.text()
    assert resp.status == 200 and text.endswith("data: [DONE]\n\n"), text
    await error(await d.client.post(CHAT, json=CHAT_BODY, headers=auth), 429,
                "daily_quota_exceeded")


async def _next_event(resp: Any) -> str:
    while True:
        line = await asyncio.wait_for(resp.content.readline(), 5.0)
        assert line, "stream ended early"
        if line.strip():
            return line.decode().strip().removeprefix("data: ")


async def test_abandoned_stream_still_costs_tokens(make_daemon: MakeDaemon,
                                                   clock: FakeClock) -> None:
    fake = FakeEngine(token_delay=0.02)
    d = await make_daemon(engine=fake, clock=clock)
    q = await d.app[ACCOUNTS].create_user("dodger", "user", daily_token_limit=10)
    auth = bearer(q.api_key)
    resp = await d.client.post(CHAT, json={**CHAT_BODY, "max_tokens": 40, "stream": True},
                               headers={**auth, "X-Request-Id": "dodge-1"}, timeout=None)
    assert resp.status == 200
    for _ in range(1 + 8):  # the role chunk, then 8 tokens: 5 + 8 = 13 > 10 already
        await _next_event(resp)
    resp.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while "chatcmpl-dodge-1" not in fake.aborted or d.life.inflight:
        assert loop.time() < deadline, "the engine request was not aborted"
        await asyncio.sleep(0.02)
    await error(await d.client.post(CHAT, json=CHAT_BODY, headers=auth), 429,
                "daily_quota_exceeded")


async def test_quota_holds_under_concurrency(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    # No backpressure limit: all 600 must reach the quota check.
    d = await make_daemon(clock=clock, env={"DEEPSEEKD_SERVER__MAX_QUEUED_REQUESTS": "0",
                                            "DEEPSEEKD_SERVER__MAX_CONCURRENT_PER_USER": "0"})
    q = await d.app[ACCOUNTS].create_user("racer", "user", daily_request_limit=500)
    auth = bearer(q.api_key)

    async def one() -> int:
        resp = await d.client.post(CHAT, json=CHAT_BODY, headers=auth)
        await resp.read()
        return resp.status

    statuses = Counter(await asyncio.gather(*(one() for _ in range(600))))
    assert statuses == {200: 500, 429: 100}
    resp = await d.client.get("/v1/models", headers=auth)
    assert _rate(resp)[:2] == (500, 0)


# --------------------------------------------------------------------------- /metrics


async def test_metrics_access(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    accounts = d.app[ACCOUNTS]
    for role in ("admin", "auditor", "metrics"):
        new = await accounts.create_user(f"m-{role}", role)
        resp = await d.client.get("/metrics", headers=bearer(new.api_key))
        text = await resp.text()
        assert resp.status == 200, (role, text)
        assert resp.content_type == "text/plain"
        assert "version=" in resp.headers["Content-Type"]
        assert "# HELP " in text and "# TYPE " in text
    await error(await d.client.get("/metrics", headers=d.auth), 403, "forbidden")
    resp = await d.client.get("/metrics")
    await error(resp, 401, "missing_api_key")
    assert resp.headers["WWW-Authenticate"] == "Bearer"
