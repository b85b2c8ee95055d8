"""Audit completeness: every route and outcome (success, 4xx, 429, 503, a client that
leaves, an engine that dies) leaves exactly the events the README's audit table documents,
each naming the client address it came from; the chain verifies afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from deepseekd.http.state import ACCOUNTS, AUDIT
from tests.api.helpers import CHAT, CHAT_BODY, bearer, code, ok_json, secret_of
from tests.fakes import FakeEngine

MakeDaemon = Any
FakeClock = Any
Step = Callable[["World"], Awaitable[Any]]


@dataclass
class World:
    d: Any
    clock: Any
    root_key: str
    root_password: str
    secret: str
    nurse_key: str
    nurse_password: str
    cid: str = ""

    def admin(self) -> dict[str, str]:
        self.clock.advance(30)
        return {**bearer(self.root_key), "X-TOTP": code(self.secret, self.clock())}

    @property
    def nurse(self) -> dict[str, str]:
        return bearer(self.nurse_key)


async def stream_and_leave(w: World) -> None:
    w.d.engine.token_delay = 0.05
    resp = await w.d.client.post(CHAT, json={**CHAT_BODY, "max_tokens": 30, "stream": True},
                                 headers=w.nurse, timeout=None)
    for _ in range(3):
        await resp.content.readline()
    resp.close()
    await asyncio.sleep(0.3)
    w.d.engine.token_delay = 0.0


async def engine_dies(w: World) -> None:
    w.d.engine.fail_after = 1
    resp = await w.d.client.post(CHAT, json={**CHAT_BODY, "max_tokens": 5}, headers=w.nurse)
    await resp.read()
    w.d.engine.fail_after = None
    w.d.engine._dead = False


async def web_login(w: World) -> None:
    await w.d.client.post("/auth/login", json={"username": "nurse", "password": w.nurse_password})


async def web_logout(w: World) -> None:
    await web_login(w)
    session = await ok_json(await w.d.client.get("/auth/session"))
    await w.d.client.post("/auth/logout", headers={"X-CSRF-Token": session["csrf_token"]})
    w.d.client.session.cookie_jar.clear()


async def new_conversation(w: World) -> None:
    resp = await w.d.client.post(CHAT, json=CHAT_BODY, headers=w.nurse)
    w.cid = resp.headers["X-Conversation-Id"]
    await resp.read()


async def rate_answer(w: World) -> None:
    conv = await ok_json(await w.d.client.get(f"/v1/conversations/{w.cid}", headers=w.nurse))
    path = f"/v1/conversations/{w.cid}/turns/{conv['turns'][0]['id']}/feedback"
    await ok_json(await w.d.client.put(path, json={"rating": "down", "comment": "wrong"},
                                       headers=w.nurse))


def call(method: str, path: str, body: Any = None, who: str = "nurse",
         headers: dict[str, str] | None = None) -> Step:
    async def step(w: World) -> Any:
        auth = {"nurse": w.nurse, "root": w.admin() if who == "root" else {},
                "rootkey": bearer(w.root_key), "none": {}, "bad": bearer("dsk-nope")}[who]
        resp = await w.d.client.request(method, path.format(cid=w.cid), json=body,
                                        headers={**auth, **(headers or {})})
        await resp.read()
        return resp.status

    return step


OK, DENIED, ERROR = "ok", "denied", "error"
CASES: list[tuple[str, Step, list[tuple[str, str]]]] = [
    ("chat", call("POST", CHAT, CHAT_BODY), [("inference", OK)]),
    ("chat-stream", call("POST", CHAT, {**CHAT_BODY, "stream": True}),
     [("inference.start", OK), ("inference", OK)]),
    ("chat-400", call("POST", CHAT, {"messages": []}), []),
    ("chat-401", call("POST", CHAT, CHAT_BODY, who="bad"), []),
    ("chat-stream-client-leaves", stream_and_leave,
     [("inference.start", OK), ("inference.abort", OK)]),
    ("chat-engine-dies", engine_dies, [("inference", ERROR)]),
    ("completion", call("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2}),
     [("inference.completion", OK)]),
    ("simple-chat", call("POST", "/chat", {"prompt": "hi", "max_tokens": 2}),
     [("inference", OK)]),
    ("models", call("GET", "/v1/models"), []),
    ("conversation-new", new_conversation, [("inference", OK)]),
    ("conversation-list", call("GET", "/v1/conversations"), []),
    ("conversation-get", call("GET", "/v1/conversations/{cid}"), []),
    ("feedback-set", rate_answer, [("feedback.set", OK)]),
    ("feedback-400", call("PUT", "/v1/conversations/{cid}/turns/{cid}/feedback",
                          {"rating": "meh"}), []),
    ("conversation-rename", call("PATCH", "/v1/conversations/{cid}", {"title": "x"}),
     [("history.rename", OK)]),
    ("conversation-delete", call("DELETE", "/v1/conversations/{cid}"), [("history.delete", OK)]),
    ("my-export", call("GET", "/v1/me/export"), [("user.export", OK)]),
    ("web-login", web_login, [("web.login", OK)]),
    ("web-login-wrong", call("POST", "/auth/login", {"username": "nurse",
                                                     "password": "wrong-password"}, who="none"),
     [("web.login", DENIED)]),
    ("web-logout", web_logout, [("web.login", OK), ("web.logout", OK)]),
    ("admin-users", call("GET", "/admin/api/users", who="root"), []),
    ("admin-status", call("GET", "/admin/api/status", who="root"), []),
    ("admin-wrong-totp", call("GET", "/admin/api/users", who="rootkey",
                              headers={"X-TOTP": "000000"}), [("admin.totp", DENIED)]),
    ("admin-403", call("GET", "/admin/api/users", headers={"X-TOTP": "000000"}), []),
    ("admin-create", call("POST", "/admin/api/users", {"name": "clerk", "role": "user"},
                          who="root"), [("user.create", OK)]),
    ("admin-limits", call("PATCH", "/admin/api/users/clerk", {"daily_request_limit": 9},
                          who="root"), [("user.limits", OK)]),
    ("admin-disable", call("POST", "/admin/api/users/clerk/disable", who="root"),
     [("user.disable", OK)]),
    ("admin-enable", call("POST", "/admin/api/users/clerk/enable", who="root"),
     [("user.enable", OK)]),
    ("admin-unlock", call("POST", "/admin/api/users/clerk/unlock", who="root"),
     [("user.unlock", OK)]),
    ("admin-reset-password", call("POST", "/admin/api/users/clerk/reset-password", who="root"),
     [("user.password_reset", OK)]),
    ("admin-key", call("POST", "/admin/api/users/clerk/keys", {"label": "x"}, who="root"),
     [("key.create", OK)]),
    ("admin-export", call("GET", "/admin/api/users/clerk/export", who="root"),
     [("user.export", OK)]),
    ("admin-settings", call("PATCH", "/admin/api/settings", {"history.retention_days": 30},
                            who="root"), [("settings.change", OK)]),
    ("admin-settings-400", call("PATCH", "/admin/api/settings", {"nope": 1}, who="root"), []),
    ("admin-notice", call("PUT", "/admin/api/notice", {"text": "Work use only."}, who="root"),
     [("notice.change", OK)]),
    ("notice-accept", call("POST", "/auth/notice", {"version": 1}), [("notice.accept", OK)]),
    ("notice-accept-409", call("POST", "/auth/notice", {"version": 7}), []),
    ("admin-feedback", call("GET", "/admin/api/feedback", who="root"), [("feedback.report", OK)]),
    ("admin-rotate", call("POST", "/admin/api/keys/rotate", who="root"), [("keys.rotate", OK)]),
    ("admin-erase", call("POST", "/admin/api/users/clerk/erase", who="root"),
     [("user.erase", OK), ("keys.rotate", OK)]),
    ("metrics-403", call("GET", "/metrics"), []),
    ("health", call("GET", "/healthz", who="none"), []),
    ("quota-429", call("POST", CHAT, CHAT_BODY), [("inference.refused", DENIED)]),
]


async def world(make_daemon: MakeDaemon, clock: FakeClock) -> World:
    d = await make_daemon(engine=FakeEngine(), clock=clock)
    root = await d.app[ACCOUNTS].create_user("root", "admin")
    nurse = await d.app[ACCOUNTS].create_user("nurse", "user")
    assert root.password and root.totp_uri and nurse.password
    return World(d, clock, root.api_key, root.password, secret_of(root.totp_uri),
                 nurse.api_key, nurse.password)


async def test_every_route_and_outcome_leaves_exactly_its_events(make_daemon: MakeDaemon,
                                                                  clock: FakeClock) -> None:
    w = await world(make_daemon, clock)
    audit = w.d.app[AUDIT]
    for name, step, expected in CASES:
        if name == "quota-429":
            await w.d.app[ACCOUNTS].set_limits("nurse", daily_request_limit=0)
        head, _ = await audit.head()
        await step(w)
        await asyncio.sleep(0.05)
        new = await audit.query(after_id=head, limit=100)
        got = [(e["action"], e["outcome"]) for e in new]
        assert got == expected, (name, new)
        for e in new:
            if e["role"] != "service":
                assert e["client"] == "127.0.0.1", (name, e)
    assert (await audit.verify()).ok


@pytest.mark.parametrize("ready", [False])
async def test_a_503_before_admission_leaves_nothing(make_daemon: MakeDaemon, ready: bool) -> None:
    gate = asyncio.Event()
    d = await make_daemon(engine=FakeEngine(start_gate=gate), ready=ready)
    head, _ = await d.app[AUDIT].head()
    resp = await d.post(CHAT, CHAT_BODY)
    assert resp.status == 503
    assert await d.app[AUDIT].query(after_id=head) == []
    gate.set()
