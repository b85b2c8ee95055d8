"""Conversation history, the audit log and key rotation over HTTP: the real app in-process
over a FakeEngine and a real SQLite file. The audit log fails closed for real: a SQLite
trigger makes every audit insert fail, and no answer leaves without an audit record."""

from __future__ import annotations

import asyncio

import json
import re
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from deepseekd.services.maintenance import Maintenance
from deepseekd.http.state import SERVICES, ACCOUNTS, DATABASE
from deepseekd.security.keyring import Keyring
from deepseekd.domain.identity import Identity
from deepseekd.services.audit import AuditLog
from deepseekd.services.history import HistoryService
from deepseekd.services.keys import KeyService

from tests.api.helpers import CHAT, LOGIN, bearer, code, error, login, ok_json, secret_of
from tests.fakes import expected_text

Daemon = Any  # tests/api/conftest.py
MakeDaemon = Any
FakeClock = Any

COMPLETIONS = "/v1/completions"
CONVS = "/v1/conversations"
DAY = 86400
AUDIT_TRIGGER = ("CREATE TRIGGER audit_down BEFORE INSERT ON audit_events "
                 "BEGIN SELECT RAISE(ABORT, 'audit disk full'); END;")


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def db_path(d: Daemon) -> Path:
    return Path(d.settings.data_dir) / "deepseekd.db"


async def raw_sql(d: Daemon, statement: str) -> list[tuple[Any, ...]]:
    """Straight on the daemon's SQLite file, behind its back; in a thread, so a daemon write
    in flight can finish instead of waiting on a loop this call would block."""
    return await asyncio.to_thread(_raw_sql, d, statement)


def _raw_sql(d: Daemon, statement: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db_path(d), timeout=10)
    try:
        rows = conn.execute(statement).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


async def count(d: Daemon, table: str, where: str = "") -> int:
    return int((await raw_sql(d, f"SELECT count(*) FROM {table} {where}"))[0][0])


def sse_payloads(text: str) -> list[Any]:
    out = []
    for line in text.split("\n"):
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def chat(d: Daemon, messages: list[dict[str, str]], *, key: str | None = None,
               conversation_id: str | None = None, max_tokens: int = 3,
               status: int = 200) -> tuple[dict[str, Any], str | None]:
    body: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    resp = await d.client.post(CHAT, json=body, headers=bearer(key or d.key))
    data = await ok_json(resp, status)
    return data, resp.headers.get("X-Conversation-Id")


async def new_user(d: Daemon, name: str, role: str = "user") -> Any:
    return await d.app[ACCOUNTS].create_user(name, role)


def is_uuid(value: str | None) -> bool:
    try:
        return value is not None and str(uuid.UUID(value)) == value
    except ValueError:
        return False


# --------------------------------------------------------------------------- conversations


async def test_conversation_lifecycle(daemon: Daemon) -> None:
    d = daemon
    u1 = msg("user", "What is the capital of Peru?")
    body, cid = await chat(d, [u1])
    assert is_uuid(cid)
    a1 = msg("assistant", body["choices"][0]["message"]["content"])
    assert a1["content"] == expected_text(3)

    u2 = msg("user", "And of Chile?")
    body2, cid2 = await chat(d, [u1, a1, u2], conversation_id=cid, max_tokens=2)
    assert cid2 == cid
    a2 = msg("assistant", body2["choices"][0]["message"]["content"])

    listed = await ok_json(await d.client.get(CONVS, headers=d.auth))
    assert listed["object"] == "list"
    assert [(c["id"], c["title"], c["turns"]) for c in listed["data"]] == [(cid, u1["content"], 2)]

    conv = await ok_json(await d.client.get(f"{CONVS}/{cid}", headers=d.auth))
    assert conv["id"] == cid and conv["title"] == u1["content"]
    assert [t["seq"] for t in conv["turns"]] == [1, 2]
    assert conv["turns"][1]["messages"] == [u1, a1, u2]
    assert conv["turns"][0]["usage"]["completion_tokens"] == 3
    # The history the client resent is not repeated in the flattened view.
    assert conv["messages"] == [u1, a1, u2, a2]

    # A new chat without the id starts another conversation.
    _, other = await chat(d, [msg("user", "unrelated")])
    assert other != cid
    listed = await ok_json(await d.client.get(CONVS, headers=d.auth))
    assert [c["id"] for c in listed["data"]] == [other, cid]

    deleted = await ok_json(await d.client.delete(f"{CONVS}/{cid}", headers=d.auth))
    assert deleted == {"id": cid, "deleted": True}
    await error(await d.client.get(f"{CONVS}/{cid}", headers=d.auth), 404,
                param="conversation_id")
    await error(await d.client.delete(f"{CONVS}/{cid}", headers=d.auth), 404)
    await error(await d.client.post(CHAT, json={"messages": [u1], "max_tokens": 1,
                                                "conversation_id": cid}, headers=d.auth), 404)
    assert (await count(d, "turns", f"WHERE conversation_id = '{cid}'")) == 0
    listed = await ok_json(await d.client.get(CONVS, headers=d.auth))
    assert [c["id"] for c in listed["data"]] == [other]


async def test_other_users_conversation_is_404(daemon: Daemon) -> None:
    d = daemon
    _, cid = await chat(d, [msg("user", "mine only")])
    eve = await new_user(d, "eve")
    engine_calls = len(d.engine.requests)
    for bad in (cid, str(uuid.uuid4()), "not-a-uuid", cid.upper()):
        err = await error(await d.client.get(f"{CONVS}/{bad}", headers=bearer(eve.api_key)), 404,
                          param="conversation_id")
        assert bad in err["message"]
        await error(await d.client.delete(f"{CONVS}/{bad}", headers=bearer(eve.api_key)), 404,
                    param="conversation_id")
        await error(await d.client.post(CHAT, headers=bearer(eve.api_key), json={
            "messages": [msg("user", "let me in")], "max_tokens": 1, "conversation_id": bad}),
            404, param="conversation_id")
    assert len(d.engine.requests) == engine_calls  # refused before any generation
    assert (await ok_json(await d.client.get(CONVS, headers=bearer(eve.api_key))))["data"] == []
    # The owner still has it, untouched.
    conv = await ok_json(await d.client.get(f"{CONVS}/{cid}", headers=d.auth))
    assert len(conv["turns"]) == 1
    # The owner's own invalid ids are 404s too, not 400s or 500s.
    await error(await d.client.get(f"{CONVS}/not-a-uuid", headers=d.auth), 404)


async def test_simple_chat_stores_turns(daemon: Daemon) -> None:
    d = daemon
    resp = await d.client.post("/chat", json={"prompt": "hello simple", "max_tokens": 2},
                               headers=d.auth)
    body = await ok_json(resp)
    cid = resp.headers.get("X-Conversation-Id")
    assert is_uuid(cid) and body == {"response": expected_text(2)}
    resp = await d.client.post("/chat", json={"prompt": "again", "max_tokens": 1,
                                              "conversation_id": cid}, headers=d.auth)
    await ok_json(resp)
    assert resp.headers.get("X-Conversation-Id") == cid
    conv = await ok_json(await d.client.get(f"{CONVS}/{cid}", headers=d.auth))
    assert conv["messages"] == [msg("user", "hello simple"), msg("assistant", expected_text(2)),
                                msg("user", "again"), msg("assistant", expected_text(1))]
    assert conv["title"] == "hello simple"


async def test_streaming_chat_stores_the_streamed_answer(daemon: Daemon) -> None:
    d = daemon
    resp = await d.client.post(CHAT, headers=d.auth, json={
        "messages": [msg("user", "stream to me")], "max_tokens": 6, "stream": True})
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    cid = resp.headers.get("X-Conversation-Id")
    assert is_uuid(cid)
    payloads = sse_payloads(await resp.text())
    assert payloads[-1] == "[DONE]"
    streamed = "".join(p["choices"][0]["delta"].get("content", "")
                       for p in payloads[:-1] if p["choices"])
    assert streamed == expected_text(6)
    conv = await ok_json(await d.client.get(f"{CONVS}/{cid}", headers=d.auth))
    assert conv["turns"][0]["answer"] == streamed
    assert conv["messages"][-1] == msg("assistant", streamed)
    # The stream wrote its start event before the first byte, then the turn's event.
    actions = [r[0] for r in (await raw_sql(d, "SELECT action FROM audit_events ORDER BY id"))]
    assert actions[-2:] == ["inference.start", "inference"]


async def test_export_me(daemon: Daemon) -> None:
    d = daemon
    _, cid = await chat(d, [msg("user", "export this please")])
    eve = await new_user(d, "eve")
    await chat(d, [msg("user", "eve's secret")], key=eve.api_key)
    resp = await d.client.get("/v1/me/export", headers=d.auth)
    data = await ok_json(resp)
    assert "deepseekd-export-tester.json" in resp.headers["Content-Disposition"]
    assert data["user"]["name"] == "tester" and data["user"]["role"] == "user"
    assert [c["id"] for c in data["conversations"]] == [cid]
    assert data["conversations"][0]["messages"][0] == msg("user", "export this please")
    assert len(data["api_keys"]) == 1 and data["daily_usage"][0]["requests"] >= 1
    assert "eve" not in json.dumps(data["conversations"])
    events = await raw_sql(d, "SELECT actor, target FROM audit_events WHERE action = 'user.export'")
    assert events == [("tester", "user:tester")]


# --------------------------------------------------------------------------- fail closed


async def test_audit_down_fails_closed_then_recovers(daemon: Daemon) -> None:
    d = daemon
    admin = await new_user(d, "root", "admin")
    auditor = await new_user(d, "aud", "auditor")
    events_before = await count(d, "audit_events")
    await raw_sql(d, AUDIT_TRIGGER)

    # Non-streaming: the model ran, but its output does not leave.
    resp = await d.client.post(CHAT, json={"messages": [msg("user", "secret question")],
                                           "max_tokens": 3}, headers=d.auth)
    text = await resp.text()
    err = await error(resp, 503, "audit_unavailable")
    assert "audit" in err["message"]
    assert "choices" not in text and expected_text(3) not in text and "tok0" not in text
    assert "X-Conversation-Id" not in resp.headers
    assert resp.headers.get("Retry-After")

    # Streaming: a plain JSON 503 before any server-sent event.
    resp = await d.client.post(CHAT, json={"messages": [msg("user", "stream it")],
                                           "max_tokens": 3, "stream": True}, headers=d.auth)
    text = await resp.text()
    assert resp.content_type == "application/json"
    assert "data:" not in text and "tok0" not in text
    await error(resp, 503, "audit_unavailable")

    # Completions (no history) and the original /chat route.
    resp = await d.client.post(COMPLETIONS, json={"prompt": "once upon", "max_tokens": 3},
                               headers=d.auth)
    assert "tok0" not in await resp.text()
    await error(resp, 503, "audit_unavailable")
    resp = await d.client.post(COMPLETIONS, json={"prompt": "once upon", "max_tokens": 3,
                                                  "stream": True}, headers=d.auth)
    assert "data:" not in await resp.text()
    await error(resp, 503, "audit_unavailable")
    resp = await d.client.post("/chat", json={"prompt": "hi", "max_tokens": 2}, headers=d.auth)
    assert "tok0" not in await resp.text()
    await error(resp, 503, "audit_unavailable")

    # Nothing half-written: no conversation, no turn, no audit event.
    assert (await count(d, "conversations")) == 0 and (await count(d, "turns")) == 0
    assert (await count(d, "audit_events")) == events_before

    resp = await d.client.get("/metrics", headers=bearer(admin.api_key))
    metrics = await resp.text()
    assert resp.status == 200, metrics
    m = re.search(r"^deepseekd_audit_write_failures_total (\S+)$", metrics, re.M)
    assert m, metrics
    assert float(m.group(1)) >= 5  # one per refused request

    # The disk has room again: the next chat goes through, and the chain is whole.
    await raw_sql(d, "DROP TRIGGER audit_down")
    body, cid = await chat(d, [msg("user", "are you back?")])
    assert body["choices"][0]["message"]["content"] == expected_text(3) and is_uuid(cid)
    assert (await count(d, "turns")) == 1
    verify = await ok_json(await d.client.get("/audit/api/verify",
                                              headers=bearer(auditor.api_key)))
    assert verify["ok"] is True and verify["first_bad_id"] is None
    assert verify["events"] == events_before + 1


async def test_audit_down_stream_with_history_request(daemon: Daemon) -> None:
    """Appending to an existing conversation while the audit log is down stores nothing."""
    d = daemon
    _, cid = await chat(d, [msg("user", "first")])
    await raw_sql(d, AUDIT_TRIGGER)
    resp = await d.client.post(CHAT, headers=d.auth, json={
        "messages": [msg("user", "second")], "max_tokens": 2, "conversation_id": cid})
    await error(resp, 503, "audit_unavailable")
    await raw_sql(d, "DROP TRIGGER audit_down")
    conv = await ok_json(await d.client.get(f"{CONVS}/{cid}", headers=d.auth))
    assert len(conv["turns"]) == 1


async def test_first_chat_during_audit_outage_keeps_the_data_key(daemon: Daemon) -> None:
    """The user's very first chat hits the outage; after recovery their turns must be
    readable by a process that starts afresh (nothing cached). Regression: the data key
    made in the rolled-back transaction was once cached and used, but never stored."""
    d = daemon
    await raw_sql(d, AUDIT_TRIGGER)
    await error(await d.client.post(CHAT, json={"messages": [msg("user", "first ever")],
                                                "max_tokens": 2}, headers=d.auth), 503)
    await raw_sql(d, "DROP TRIGGER audit_down")
    _, cid = await chat(d, [msg("user", "after the outage")])
    uid = int((await raw_sql(d, "SELECT id FROM users WHERE name = 'tester'"))[0][0])
    db = d.app[DATABASE]
    keys = KeyService(db, Keyring([Path(d.settings.data_dir) / "keys"]), Path(d.settings.data_dir) / "keys", time.time)
    await keys.check()
    history = HistoryService(db, keys, AuditLog(db, keys.cached_audit_key, time.time), time.time)
    conv = await history.get_conversation(Identity(uid, "tester", "user", "api_key"), cid)
    assert conv["turns"][0].get("answer") == expected_text(3), conv["turns"]
    assert (await count(d, "user_keys", f"WHERE user_id = {uid}")) == 1


# --------------------------------------------------------------------------- audit coverage


async def test_audit_trail_covers_the_operations(make_daemon: MakeDaemon,
                                                 clock: FakeClock) -> None:
    d = await make_daemon(clock=clock)
    c = d.client
    t0 = clock()
    prompt = "the vault combination is 31-41-59"
    await chat(d, [msg("user", prompt)])
    auditor = await new_user(d, "aud", "auditor")
    root = await new_user(d, "root", "admin")
    locky = await new_user(d, "locky", "admin")
    clock.advance(100)
    t1 = clock()

    # Admin logins: one refused, one accepted; five refusals lock another admin.
    resp = await c.post(LOGIN, json={"username": "root", "password": "wrong-password-123",
                                     "totp": code(secret_of(root.totp_uri), clock())})
    await error(resp, 401, "login_failed")
    token = await login(c, "root", root.password, secret_of(root.totp_uri), clock)
    auth = bearer(token)
    for _ in range(5):
        resp = await c.post(LOGIN, json={"username": "locky", "password": "wrong-password-123",
                                         "totp": code(secret_of(locky.totp_uri), clock())})
        await error(resp, 401, "login_failed")

    # Admin actions: create a user, revoke its key, erase it; export; rotate the master key.
    await ok_json(await c.post("/admin/api/users", json={"name": "carol", "role": "user"},
                               headers=auth), 201)
    keys = (await ok_json(await c.get("/admin/api/users/carol/keys", headers=auth)))["keys"]
    await ok_json(await c.delete(f"/admin/api/keys/{keys[0]['id']}", headers=auth))
    erased = await ok_json(await c.post("/admin/api/users/carol/erase", headers=auth))
    assert erased["erased"] is True
    exported = await ok_json(await c.get("/admin/api/users/tester/export", headers=auth))
    # On someone's behalf, without a break-glass: the content is withheld.
    assert "messages" not in exported["conversations"][0] and "history_withheld" in exported
    rotated = await ok_json(await c.post("/admin/api/keys/rotate", headers=auth))
    # The erasure already rotated once (its epoch: v1, which a backup from before it would
    # need, is gone); this is the second rotation.
    assert rotated == {"retired": [2], "current": 3}

    ah = bearer(auditor.api_key)
    events = (await ok_json(await c.get("/audit/api/events?limit=1000", headers=ah)))["events"]
    by_action: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        by_action.setdefault(ev["action"], []).append(ev)
    for action in ("inference", "admin.login", "account.lockout", "user.create", "key.revoke",
                   "user.erase", "user.export", "keys.rotate", "service.start", "config.load"):
        assert action in by_action, (action, sorted(by_action))
    assert {e["outcome"] for e in by_action["admin.login"]} == {"ok", "denied"}
    assert [e["actor"] for e in by_action["account.lockout"]] == ["locky"]
    assert any(e["actor"] == "root" and e["target"] == "user:carol"
               for e in by_action["user.create"])
    assert by_action["key.revoke"][0]["target"] == f"key:{keys[0]['id']}"
    assert by_action["user.erase"][0]["actor"] == "root"
    assert by_action["user.erase"][0]["target"] == "user:carol"
    assert by_action["user.export"][0]["target"] == "user:tester"
    epoch, by_hand = by_action["keys.rotate"]
    assert epoch["role"] == "service" and "erasure of carol" in epoch["detail"]
    assert by_hand["actor"] == "root"
    inference = by_action["inference"][0]
    assert inference["actor"] == "tester" and re.fullmatch(r"[0-9a-f]{64}",
                                                           inference["prompt_hmac"])
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    # Never content, only HMACs of it.
    assert "31-41-59" not in json.dumps(events) and "vault" not in json.dumps(events)

    async def query(qs: str) -> dict[str, Any]:
        return await ok_json(await c.get(f"/audit/api/events?{qs}", headers=ah))

    # Filters.
    mine = (await query("actor=root&limit=1000"))["events"]
    assert mine and all(e["actor"] == "root" for e in mine)
    assert {e["action"] for e in mine} >= {"admin.login", "user.create", "user.erase"}
    logins = (await query("action=admin.login"))["events"]
    assert [e["id"] for e in logins] == [e["id"] for e in by_action["admin.login"]]
    early = (await query(f"until={t1}&limit=1000"))["events"]
    late = (await query(f"since={t1}&limit=1000"))["events"]
    assert all(e["at"] < t1 for e in early) and all(e["at"] >= t1 for e in late)
    assert [e["id"] for e in early + late] == [e["id"] for e in events]
    assert {"service.start", "config.load", "inference"} <= {e["action"] for e in early}
    assert "service.start" not in {e["action"] for e in late}
    assert (await query(f"since={t0}&until={t0}"))["events"] == []

    # Paging: limit + after_id, following next_after_id to the end.
    seen: list[int] = []
    after = 0
    while True:
        page = await query(f"limit=4&after_id={after}")
        assert len(page["events"]) <= 4
        seen += [e["id"] for e in page["events"]]
        if page["next_after_id"] is None:
            break
        assert page["next_after_id"] == page["events"][-1]["id"]
        after = page["next_after_id"]
    assert seen == [e["id"] for e in events]

    # Bad parameters: a 400 naming the parameter.
    for qs, param in (("limit=0", "limit"), ("limit=1001", "limit"), ("limit=abc", "limit"),
                      ("since=abc", "since"), ("until=nan", "until"), ("after_id=-1", "after_id"),
                      ("after_id=1.5", "after_id")):
        await error(await c.get(f"/audit/api/events?{qs}", headers=ah), 400, param=param)

    # Only auditors read the log.
    await error(await c.get("/audit/api/events", headers=d.auth), 403, "forbidden")
    await error(await c.get("/audit/api/events", headers=auth), 403, "forbidden")
    verify = await ok_json(await c.get("/audit/api/verify", headers=ah))
    assert verify["ok"] is True and verify["events"] >= len(events)


# --------------------------------------------------------------------------- rotation


async def test_automatic_rotation(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d = await make_daemon(clock=clock)
    keys_dir = Path(d.settings.data_dir) / "keys"
    _, cid = await chat(d, [msg("user", "remember me across keys")])
    maintenance = Maintenance(d.app[SERVICES])

    clock.advance(89 * DAY)
    await maintenance.tick(now=clock())
    assert sorted(p.name for p in keys_dir.iterdir()) == ["master-v1.key"]

    clock.advance(2 * DAY)  # 91 days: past keys.rotation_days (90)
    await maintenance.tick(now=clock())
    assert sorted(p.name for p in keys_dir.iterdir()) == ["master-v2.key"]
    assert (await raw_sql(d, "SELECT DISTINCT kek_version FROM user_keys")) == [(2,)]
    assert (await raw_sql(d, "SELECT DISTINCT kek_version FROM service_keys")) == [(2,)]
    events = await raw_sql(d, "SELECT role, detail FROM audit_events WHERE action = 'keys.rotate'")
    assert len(events) == 1
    role, detail = events[0]
    assert role == "service" and "automatic" in detail and "v2" in detail

    # Not again within the hour, nor while the new key is young.
    await maintenance.tick(now=clock() + 10)
    await Maintenance(d.app[SERVICES]).tick(now=clock() + 7200)
    assert sorted(p.name for p in keys_dir.iterdir()) == ["master-v2.key"]

    # Earlier turns read fine, through the daemon and through a process that starts now.
    conv = await ok_json(await d.client.get(f"{CONVS}/{cid}", headers=d.auth))
    assert conv["turns"][0]["answer"] == expected_text(3)
    db = d.app[DATABASE]
    keys = KeyService(db, Keyring([keys_dir]), keys_dir, clock)
    await keys.check()
    audit = AuditLog(db, keys.cached_audit_key, clock)
    who = Identity(int((await raw_sql(d, "SELECT id FROM users WHERE name = 'tester'"))[0][0]),
                   "tester", "user", "api_key")
    fresh = await HistoryService(db, keys, audit, clock).get_conversation(who, cid)
    assert fresh["messages"][0]["content"] == "remember me across keys"
    assert not any(t.get("unreadable") for t in fresh["turns"])
    assert (await audit.verify()).ok
    # And new chats go on.
    await chat(d, [msg("user", "after rotation")], conversation_id=cid)


async def test_conversation_list_pages(daemon: Daemon) -> None:
    """Most recent first, `limit` per page, `after` = the last id seen, `has_more` until the
    end; every conversation exactly once. Bad paging parameters are a 400 naming them."""
    d = daemon
    made = []
    for i in range(7):
        _, cid = await chat(d, [msg("user", f"topic {i}")])
        made.append(cid)
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        query = "?limit=3" + (f"&after={after}" if after else "")
        page = await ok_json(await d.client.get(CONVS + query, headers=d.auth))
        seen += [c["id"] for c in page["data"]]
        pages += 1
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert pages == 3 and seen == list(reversed(made))
    everything = await ok_json(await d.client.get(CONVS, headers=d.auth))
    assert [c["id"] for c in everything["data"]] == seen and everything["has_more"] is False
    for bad in ("limit=0", "limit=201", "limit=x"):
        err = await error(await d.client.get(f"{CONVS}?{bad}", headers=d.auth), 400)
        assert err["param"] == "limit"
    other = await new_user(d, "paula")
    err = await error(await d.client.get(f"{CONVS}?after={made[0]}",
                                         headers=bearer(other.api_key)), 400)
    assert err["param"] == "after"  # another user's id is not a cursor
