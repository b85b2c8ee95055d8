"""The acceptable-use notice over HTTP (the real app in-process over a FakeEngine and a real
SQLite file): the admin sets it, each change a new version audited by length and hash (never
the text); a chat-page session must accept the version in force before it may chat, once per
version, each acceptance audited; API keys are not held to it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from deepseekd.http.state import ACCOUNTS, AUDIT
from tests.api.helpers import CHAT, CHAT_BODY, bearer, code, error, ok_json, secret_of

MakeDaemon = Any  # tests/api/conftest.py
FakeClock = Any

NOTICE = "/admin/api/notice"
ACCEPT = "/auth/notice"
TEXT = "Use this service for work only.\r\nNever paste data you may not share.\n"
STORED = "Use this service for work only.\nNever paste data you may not share."


@dataclass
class World:
    d: Any
    clock: FakeClock
    root_key: str
    secret: str
    nurse_key: str
    nurse_password: str

    def admin(self) -> dict[str, str]:
        self.clock.advance(30)  # each code is accepted once
        return {**bearer(self.root_key), "X-TOTP": code(self.secret, self.clock())}

    async def put(self, text: Any, status: int = 200) -> dict[str, Any]:
        resp = await self.d.client.put(NOTICE, json={"text": text}, headers=self.admin())
        return await ok_json(resp, status)  # type: ignore[no-any-return]

    async def web_login(self) -> str:
        """A chat-page session of the nurse (the client keeps the cookie); its CSRF token."""
        body = await ok_json(await self.d.client.post(
            "/auth/login", json={"username": "nurse", "password": self.nurse_password}))
        return str(body["csrf_token"])

    async def events(self, action: str) -> list[dict[str, Any]]:
        return await self.d.app[AUDIT].query(action=action)  # type: ignore[no-any-return]


async def world(make_daemon: MakeDaemon, clock: FakeClock) -> World:
    d = await make_daemon(clock=clock)
    root = await d.app[ACCOUNTS].create_user("root", "admin")
    nurse = await d.app[ACCOUNTS].create_user("nurse", "user")
    assert root.totp_uri and nurse.password
    return World(d, clock, root.api_key, secret_of(root.totp_uri), nurse.api_key, nurse.password)


async def test_each_change_is_a_version_audited_without_its_text(make_daemon: MakeDaemon,
                                                                 clock: FakeClock) -> None:
    w = await world(make_daemon, clock)
    empty = await ok_json(await w.d.client.get(NOTICE, headers=w.admin()))
    assert (empty["version"], empty["text"], empty["active"]) == (0, "", False)
    assert empty["max_chars"] == 4000

    first = await w.put(TEXT)
    digest = hashlib.sha256(STORED.encode()).hexdigest()
    assert first["changed"] is True and first["active"] is True
    assert (first["version"], first["text"], first["sha256"]) == (1, STORED, digest)
    assert first["updated_by"] == "root" and first["accepted_by"] == 0
    [event] = await w.events("notice.change")
    assert (event["actor"], event["target"], event["outcome"]) == ("root", "notice:1", "ok")
    assert json.loads(event["detail"]) == {"chars": len(STORED), "sha256": digest}
    assert "paste" not in json.dumps(event)  # the text itself is never audited

    # The same text again is no change: no new version, nobody asked again, no event.
    again = await w.put(STORED + "\n")
    assert (again["changed"], again["version"]) == (False, 1)
    assert len(await w.events("notice.change")) == 1

    removed = await w.put("   ")
    assert (removed["changed"], removed["version"], removed["active"]) == (True, 2, False)
    assert [e["target"] for e in await w.events("notice.change")] == ["notice:1", "notice:2"]
    shown = await ok_json(await w.d.client.get(NOTICE, headers=w.admin()))
    assert (shown["version"], shown["text"], shown["active"]) == (2, "", False)


async def test_bad_input_is_refused_naming_the_field(make_daemon: MakeDaemon,
                                                     clock: FakeClock) -> None:
    w = await world(make_daemon, clock)
    c = w.d.client
    for body in ({"text": "x" * 4001}, {"text": 12}, {}, {"text": "bell\x07"},
                 {"text": "ok", "html": True}):
        resp = await c.put(NOTICE, json=body, headers=w.admin())
        err = await error(resp, 400, "invalid_value")
        assert err["param"] == ("html" if "html" in body else "text"), (body, err)
    assert "4000" in (await error(await c.put(NOTICE, json={"text": "x" * 4001},
                                              headers=w.admin()), 400))["message"]
    assert (await w.put("y" * 4000))["version"] == 1  # the limit itself is fine
    for body in ({"version": "1"}, {}, {"version": 1.5}):
        resp = await c.post(ACCEPT, json=body, headers=bearer(w.nurse_key))
        await error(resp, 400, "invalid_value", "version")
    assert await w.events("notice.accept") == []
    # Only admins set it; users and auditors may not even read it there.
    auditor = await w.d.app[ACCOUNTS].create_user("aud", "auditor")
    for key in (w.nurse_key, auditor.api_key):
        await error(await c.get(NOTICE, headers=bearer(key)), 403, "forbidden")
        await error(await c.put(NOTICE, json={"text": "x"}, headers=bearer(key)), 403, "forbidden")


async def test_a_chat_page_session_accepts_once_per_version(make_daemon: MakeDaemon,
                                                            clock: FakeClock) -> None:
    w = await world(make_daemon, clock)
    c = w.d.client
    csrf = await w.web_login()
    session = await ok_json(await c.get("/auth/session"))
    assert session["notice"] is None  # no notice: nothing to accept
    await ok_json(await c.post(CHAT, json=CHAT_BODY, headers={"X-CSRF-Token": csrf}))

    await w.put(TEXT)
    session = await ok_json(await c.get("/auth/session"))
    assert session["notice"] == {"version": 1, "text": STORED}
    engine_calls = len(w.d.engine.request_ids)
    head, _ = await w.d.app[AUDIT].head()
    refused = await error(await c.post(CHAT, json=CHAT_BODY, headers={"X-CSRF-Token": csrf}),
                          403, "notice_not_accepted")
    assert "notice" in refused["message"]
    assert len(w.d.engine.request_ids) == engine_calls  # refused before the engine
    assert await w.d.app[AUDIT].query(after_id=head) == []  # and before admission

    # A program with the same user's API key is not held to it (it cannot read a dialog).
    c.session.cookie_jar.clear()
    await ok_json(await c.post(CHAT, json=CHAT_BODY, headers=bearer(w.nurse_key)))
    csrf = await w.web_login()

    stale = await error(await c.post(ACCEPT, json={"version": 2}, headers={"X-CSRF-Token": csrf}),
                        409, "notice_changed", "version")
    assert "version 1" in stale["message"]
    ok = await ok_json(await c.post(ACCEPT, json={"version": 1}, headers={"X-CSRF-Token": csrf}))
    assert ok == {"object": "notice.acceptance", "version": 1, "accepted": True}
    [event] = await w.events("notice.accept")
    assert (event["actor"], event["target"], event["outcome"]) == ("nurse", "notice:1", "ok")
    assert json.loads(event["detail"]) == {"sha256": hashlib.sha256(STORED.encode()).hexdigest()}
    assert (await ok_json(await c.get("/auth/session")))["notice"] is None
    await ok_json(await c.post(CHAT, json=CHAT_BODY, headers={"X-CSRF-Token": csrf}))
    # Accepting again changes nothing and is not audited twice.
    await ok_json(await c.post(ACCEPT, json={"version": 1}, headers={"X-CSRF-Token": csrf}))
    assert len(await w.events("notice.accept")) == 1
    c.session.cookie_jar.clear()
    assert (await ok_json(await c.get(NOTICE, headers=w.admin())))["accepted_by"] == 1

    # A new version asks again.
    await w.put("Version two: read the new rules.")
    csrf = await w.web_login()
    assert (await ok_json(await c.get("/auth/session")))["notice"] == {
        "version": 2, "text": "Version two: read the new rules."}
    await error(await c.post(CHAT, json=CHAT_BODY, headers={"X-CSRF-Token": csrf}),
                403, "notice_not_accepted")
    await ok_json(await c.post(ACCEPT, json={"version": 2}, headers={"X-CSRF-Token": csrf}))
    await ok_json(await c.post(CHAT, json=CHAT_BODY, headers={"X-CSRF-Token": csrf}))
    assert [e["target"] for e in await w.events("notice.accept")] == ["notice:1", "notice:2"]

    # Removing the notice asks nobody anything; there is nothing to accept.
    c.session.cookie_jar.clear()
    await w.put("")
    csrf = await w.web_login()
    assert (await ok_json(await c.get("/auth/session")))["notice"] is None
    await error(await c.post(ACCEPT, json={"version": 3}, headers={"X-CSRF-Token": csrf}),
                409, "notice_changed", "version")
