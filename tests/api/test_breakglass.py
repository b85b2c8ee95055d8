"""Break-glass (emergency access) through the daemon's HTTP API: who may start one, the fresh
second factor, reading another user's history ONLY under it (and every read on the record),
the quota lift, acting as admin, the end by stop or by time, the auditor's review queue, the
gauges behind the alerts, and the notices (a real webhook server and a real syslog socket)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from typing import Any

from aiohttp import web

from deepseekd.http.state import ACCOUNTS, METRICS, SERVICES
from tests.api.helpers import bearer, code, error, login, ok_json, secret_of

MakeDaemon = Any
FakeClock = Any
BG = "/admin/api/breakglass"
REVIEWS = "/audit/api/breakglass"
PROMPT = "Patient in bed 4 reports chest pain since this morning."


async def chat(d: Any, key: str, content: str = PROMPT, status: int = 200) -> str | None:
    resp = await d.client.post("/v1/chat/completions", headers=bearer(key),
                               json={"messages": [{"role": "user", "content": content}],
                                     "max_tokens": 3})
    assert resp.status == status, await resp.text()
    return resp.headers.get("X-Conversation-Id")


class Box:
    """A daemon where root (admin) and oncall (a pre-staged local account) may break glass,
    and other (admin) may not; tester is the clinician whose data it is about."""

    def __init__(self, d: Any, clock: FakeClock, people: dict[str, Any]) -> None:
        self.d, self.clock, self.people = d, clock, people
        self.c = d.client

    def code(self, name: str) -> str:
        self.clock.advance(30)  # a fresh step: a code is good once
        return code(secret_of(self.people[name].totp_uri), self.clock())

    async def token(self, name: str) -> dict[str, str]:
        self.clock.advance(30)
        user = self.people[name]
        return bearer(await login(self.c, name, user.password, secret_of(user.totp_uri),
                                  self.clock))

    async def start(self, auth: dict[str, str], name: str, status: int = 201,
                    **body: Any) -> dict[str, Any]:
        payload = {"scope": "read_history", "target": "tester", "reason_code": "treatment",
                   "reason": "Unconscious patient; his notes are in tester's chats",
                   "totp": self.code(name), **body}
        resp = await self.c.post(BG, json=payload, headers=auth)
        if status != 201:
            return await error(resp, status)
        return await ok_json(resp, 201)

    async def events(self, action: str) -> list[dict[str, Any]]:
        auditor = self.people["audrey"]
        got = await ok_json(await self.c.get(f"/audit/api/events?action={action}&limit=1000",
                                             headers=bearer(auditor.api_key)))
        return list(got["events"])


async def make_box(make_daemon: MakeDaemon, clock: FakeClock, **env: str) -> Box:
    d = await make_daemon(clock=clock, env={"DEEPSEEKD_BREAKGLASS__ALLOWED": "root,oncall",
                                            **env})
    accounts = d.app[ACCOUNTS]
    people = {n: await accounts.create_user(n, r) for n, r in
              (("root", "admin"), ("other", "admin"), ("oncall", "user"), ("audrey", "auditor"))}
    # A pre-staged account gets an authenticator because it is listed in [breakglass] allowed.
    uri = await accounts.reset_totp("oncall")
    people["oncall"] = dataclasses.replace(people["oncall"], totp_uri=uri)
    return Box(d, clock, people)


# --------------------------------------------------------------------------- history


async def test_another_users_history_only_under_break_glass(make_daemon: MakeDaemon,
                                                            clock: FakeClock) -> None:
    box = await make_box(make_daemon, clock)
    cid = await chat(box.d, box.d.key)
    root = await box.token("root")
    # Without break-glass an admin's export on the user's behalf withholds the content.
    exported = await ok_json(await box.c.get("/admin/api/users/tester/export", headers=root))
    assert [c["id"] for c in exported["conversations"]] == [cid]
    assert PROMPT not in json.dumps(exported) and "history_withheld" in exported
    # There is no other way in: another user's conversation is simply not found.
    await error(await box.c.get(f"/v1/conversations/{cid}", headers=root), 404)

    started = await box.start(root, "root")
    assert started["active"] and started["scope"] == "read_history"
    assert started["expires_at"] - started["started_at"] == 60 * 60  # default_minutes
    listed = await ok_json(await box.c.get(f"{BG}/{started['id']}/conversations", headers=root))
    assert [c["id"] for c in listed["conversations"]] == [cid]
    conv = await ok_json(await box.c.get(f"{BG}/{started['id']}/conversations/{cid}",
                                         headers=root))
    assert conv["messages"][0]["content"] == PROMPT
    # Under break-glass the export carries the content, and says who read it.
    exported = await ok_json(await box.c.get("/admin/api/users/tester/export", headers=root))
    assert PROMPT in json.dumps(exported)

    reads = await box.events("breakglass.read")
    assert [(e["actor"], e["target"]) for e in reads] == [("root", "user:tester")] * 3
    assert all(json.loads(e["detail"])["breakglass"] == started["id"] for e in reads)
    start_ev = (await box.events("breakglass.start"))[0]
    detail = json.loads(start_ev["detail"])
    assert (detail["scope"], detail["reason_code"], detail["minutes"]) == (
        "read_history", "treatment", 60)

    stopped = await ok_json(await box.c.post(f"{BG}/{started['id']}/stop", headers=root))
    assert (stopped["active"], stopped["end_reason"]) == (False, "stopped")
    await error(await box.c.get(f"{BG}/{started['id']}/conversations/{cid}", headers=root),
                403, "breakglass_inactive")
    exported = await ok_json(await box.c.get("/admin/api/users/tester/export", headers=root))
    assert PROMPT not in json.dumps(exported)
    assert len(await box.events("breakglass.stop")) == 1


async def test_access_ends_by_time_and_the_sweep_records_it(make_daemon: MakeDaemon,
                                                           clock: FakeClock) -> None:
    box = await make_box(make_daemon, clock)
    cid = await chat(box.d, box.d.key)
    root = await box.token("root")
    started = await box.start(root, "root", minutes=5)
    url = f"{BG}/{started['id']}/conversations/{cid}"
    await ok_json(await box.c.get(url, headers=root))
    box.clock.advance(5 * 60 + 1)
    root = await box.token("root")  # the admin session idled out meanwhile
    # Refused at once, before any sweep ran: access ends at expires_at.
    await error(await box.c.get(url, headers=root), 403, "breakglass_inactive")
    assert await box.d.app[SERVICES].breakglass.expire_due() == 1
    mine = await ok_json(await box.c.get(BG, headers=root))
    assert (mine["sessions"][0]["end_reason"], mine["sessions"][0]["active"]) == (
        "expired", False)
    expired = await box.events("breakglass.expire")
    assert [(e["actor"], e["role"]) for e in expired] == [("root", "service")]
    # Renewing is a new start, with its own reason, code and event.
    again = await box.start(root, "root", minutes=5, reason="Still in resus")
    assert again["id"] != started["id"] and len(await box.events("breakglass.start")) == 2


# --------------------------------------------------------------------------- who may


async def test_only_the_listed_with_a_fresh_code_may_start(make_daemon: MakeDaemon,
                                                          clock: FakeClock) -> None:
    box = await make_box(make_daemon, clock)
    other = await box.token("other")
    overview = await ok_json(await box.c.get(BG, headers=other))
    assert overview["allowed"] is False and overview["sessions"] == []
    await box.start(other, "other", status=403)
    denied = await box.events("breakglass.start")
    assert [(e["actor"], e["outcome"]) for e in denied] == [("other", "denied")]
    root = await box.token("root")
    # A session's second factor is not enough: the start asks for a code now.
    resp = await box.c.post(BG, json={"scope": "read_history", "target": "tester",
                                      "reason_code": "treatment", "reason": "x"}, headers=root)
    await error(resp, 401)
    resp = await box.c.post(BG, json={"scope": "read_history", "target": "tester",
                                      "reason_code": "treatment", "reason": "x",
                                      "totp": "000000"}, headers=root)
    await error(resp, 401, "second_factor_failed")
    # A clinician's own key (not listed) cannot even ask.
    resp = await box.c.post(BG, json={"scope": "lift_quota", "target": "tester",
                                      "reason_code": "other", "reason": "x", "totp": "1"},
                            headers=box.d.auth)
    await error(resp, 403, "breakglass_not_allowed")
    assert (await ok_json(await box.c.get(BG, headers=root)))["sessions"] == []


async def test_bad_requests_name_the_field_and_start_nothing(make_daemon: MakeDaemon,
                                                            clock: FakeClock) -> None:
    box = await make_box(make_daemon, clock)
    root = await box.token("root")
    cases = [
        ({"scope": "everything"}, 400, "scope"),
        ({"reason_code": "boredom"}, 400, "reason_code"),
        ({"reason": "   "}, 400, "reason"),
        ({"reason": "x" * 501}, 400, "reason"),
        ({"minutes": 241}, 400, "minutes"),
        ({"minutes": 0}, 400, "minutes"),
        ({"target": None}, 400, "target"),
        ({"target": "root"}, 400, "target"),
        ({"scope": "admin"}, 400, "target"),
        ({"target": "nobody"}, 404, "target"),
    ]
    for body, status, param in cases:
        got = await box.start(root, "root", status=status, **body)
        assert got["param"] == param, (body, got)
    assert (await ok_json(await box.c.get(BG, headers=root)))["sessions"] == []
    assert await box.events("breakglass.start") == []


# --------------------------------------------------------------------------- quota, admin


async def test_lifting_a_quota_lets_the_clinician_work_on_the_record(make_daemon: MakeDaemon,
                                                                    clock: FakeClock) -> None:
    box = await make_box(make_daemon, clock)
    root = await box.token("root")
    await ok_json(await box.c.patch("/admin/api/users/tester", json={"daily_request_limit": 1},
                                    headers=root))
    await chat(box.d, box.d.key)
    await chat(box.d, box.d.key, status=429)
    started = await box.start(root, "root", scope="lift_quota", reason_code="treatment",
                              reason="Night shift: only tester is on the ward")
    await chat(box.d, box.d.key)
    lifted = await box.events("breakglass.quota")
    assert [(e["actor"], json.loads(e["detail"])["breakglass"]) for e in lifted] == [
        ("tester", started["id"])]
    await ok_json(await box.c.post(f"{BG}/{started['id']}/stop", headers=root))
    await chat(box.d, box.d.key, status=429)


async def test_a_pre_staged_account_acts_as_admin_only_while_it_lasts(
        make_daemon: MakeDaemon, clock: FakeClock) -> None:
    box = await make_box(make_daemon, clock)
    oncall = bearer(box.people["oncall"].api_key)
    users = "/admin/api/users"
    await error(await box.c.get(users, headers={**oncall, "X-TOTP": box.code("oncall")}), 403)
    started = await box.start(oncall, "oncall", scope="admin", target=None,
                              reason_code="recovery", reason="Directory down; ward locked out")
    listed = await ok_json(await box.c.get(users, headers={**oncall,
                                                           "X-TOTP": box.code("oncall")}))
    assert "tester" in {u["name"] for u in listed["users"]}
    await ok_json(await box.c.patch(f"{users}/tester", json={"daily_request_limit": 50},
                                    headers={**oncall, "X-TOTP": box.code("oncall")}))
    # The console's sign-in lets the holder in too, while it lasts.
    console = await box.token("oncall")
    await ok_json(await box.c.get(users, headers=console))
    # What it did is in its review, with the start and the stop.
    await ok_json(await box.c.post(f"{BG}/{started['id']}/stop", headers=oncall))
    await error(await box.c.get(users, headers={**oncall, "X-TOTP": box.code("oncall")}), 403)
    await error(await box.c.get(users, headers=console), 403)
    box.clock.advance(30)
    person = box.people["oncall"]
    resp = await box.c.post("/admin/api/login", json={
        "username": "oncall", "password": person.password,
        "totp": code(secret_of(person.totp_uri), box.clock())})
    await error(resp, 401)
    queue = await ok_json(await box.c.get(REVIEWS, headers=bearer(
        box.people["audrey"].api_key)))
    actions = [e["action"] for e in queue["sessions"][0]["events"]]
    assert actions[0] == "breakglass.start" and actions[-1] == "breakglass.stop"
    assert "user.limits" in actions


# --------------------------------------------------------------------------- review


async def test_the_auditor_reviews_each_one_and_the_gauges_follow(make_daemon: MakeDaemon,
                                                                 clock: FakeClock) -> None:
    box = await make_box(make_daemon, clock, DEEPSEEKD_BREAKGLASS__REVIEW_HOURS="1")
    metrics = box.d.app[METRICS]
    bg = box.d.app[SERVICES].breakglass
    audrey = bearer(box.people["audrey"].api_key)
    root = await box.token("root")
    started = await box.start(root, "root")
    assert await bg.refresh_counts() == (1, 0)
    assert metrics.breakglass_active._value.get() == 1
    url = f"{REVIEWS}/{started['id']}/review"
    await error(await box.c.post(url, json={"comment": "ok"}, headers=audrey), 409,
                "breakglass_active")
    await ok_json(await box.c.post(f"{BG}/{started['id']}/stop", headers=root))
    box.clock.advance(3601)
    assert await bg.refresh_counts() == (0, 1)
    assert metrics.breakglass_unreviewed._value.get() == 1
    queue = await ok_json(await box.c.get(REVIEWS, headers=audrey))
    assert [s["id"] for s in queue["sessions"]] == [started["id"]]
    assert queue["sessions"][0]["reason"].startswith("Unconscious patient")
    await error(await box.c.post(url, json={"comment": " "}, headers=audrey), 400,
                param="comment")
    await error(await box.c.post(url, json={"comment": "x"}, headers=await box.token("root")),
                403)
    done = await ok_json(await box.c.post(url, json={"comment": "Justified: code blue"},
                                          headers=audrey))
    assert (done["reviewed_by"], done["review_comment"]) == ("audrey", "Justified: code blue")
    await error(await box.c.post(url, json={"comment": "again"}, headers=audrey), 409,
                "already_reviewed")
    assert await bg.refresh_counts() == (0, 0)
    assert (await ok_json(await box.c.get(REVIEWS, headers=audrey)))["sessions"] == []
    everything = await ok_json(await box.c.get(REVIEWS + "?status=all", headers=audrey))
    assert everything["sessions"][0]["reviewed_at"] is not None
    await error(await box.c.get(REVIEWS + "?status=maybe", headers=audrey), 400,
                param="status")
    assert [e["actor"] for e in await box.events("breakglass.review")] == ["audrey"]


async def test_erasing_the_user_while_their_history_is_open(make_daemon: MakeDaemon,
                                                            clock: FakeClock) -> None:
    """Two features at once: an erasure wins over an open break-glass."""
    box = await make_box(make_daemon, clock)
    cid = await chat(box.d, box.d.key)
    root = await box.token("root")
    started = await box.start(root, "root")
    await ok_json(await box.c.post("/admin/api/users/tester/erase", headers=root))
    root = await box.token("root")
    resp = await box.c.get(f"{BG}/{started['id']}/conversations/{cid}", headers=root)
    assert resp.status == 404
    assert PROMPT not in await resp.text()


# --------------------------------------------------------------------------- notices


async def test_supervisors_hear_of_start_and_end(make_daemon: MakeDaemon, clock: FakeClock,
                                                 aiohttp_server: Any) -> None:
    heard: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        heard.append(await request.json())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    syslog = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    syslog.bind(("127.0.0.1", 0))
    syslog.settimeout(10)
    port = syslog.getsockname()[1]
    try:
        box = await make_box(
            make_daemon, clock,
            DEEPSEEKD_BREAKGLASS__NOTIFY_URL=f"http://127.0.0.1:{server.port}/hook",
            DEEPSEEKD_BREAKGLASS__NOTIFY_SYSLOG=f"udp://127.0.0.1:{port}")
        root = await box.token("root")
        started = await box.start(root, "root")
        await ok_json(await box.c.post(f"{BG}/{started['id']}/stop", headers=root))
        for _ in range(200):
            if len(heard) >= 2:
                break
            await asyncio.sleep(0.05)
        assert [(h["subject"], h["id"], h["actor"], h["scope"]) for h in heard] == [
            ("break-glass started", started["id"], "root", "read_history"),
            ("break-glass stopped", started["id"], "root", "read_history")]
        assert "reason" not in heard[0]  # the free text stays in the box
        got = await asyncio.to_thread(syslog.recv, 4096)
        assert got.startswith(b"<33>")  # facility auth (4) * 8 + priority alert (1)
        assert b"break-glass started" in got and PROMPT.encode() not in got
    finally:
        syslog.close()
