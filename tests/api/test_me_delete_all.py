"""DELETE /v1/conversations: a user deletes all of their own history at once ("My data" on
the chat page). Only their conversations go (turns and feedback with them), in one
transaction audited ``history.delete_all`` with the count; the account, its API keys, its
data key and today's usage stay (unlike erasure). An answer still streaming in another tab
then fails to seal cleanly, or (a new conversation) is stored whole as a new one."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from deepseekd.http.middleware.auth import WEB_COOKIE
from deepseekd.http.state import ACCOUNTS
from deepseekd.security.apikeys import csrf_token
from tests.api.helpers import CHAT, bearer, error, ok_json
from tests.fakes import FakeEngine

MakeDaemon = Any  # tests/api/conftest.py
Daemon = Any
CONVS = "/v1/conversations"
DATA_KEYS = "SELECT user_id, kek_version, wrapped FROM user_keys ORDER BY user_id"


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _raw_sql(d: Daemon, statement: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(Path(d.settings.data_dir) / "deepseekd.db", timeout=10)
    try:
        rows = conn.execute(statement).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


async def raw_sql(d: Daemon, statement: str) -> list[tuple[Any, ...]]:
    """On the daemon's SQLite file, in a thread (a daemon write in flight can finish)."""
    return await asyncio.to_thread(_raw_sql, d, statement)


async def chat(d: Daemon, key: str, messages: list[dict[str, str]],
               conversation_id: str | None = None) -> tuple[str, str]:
    """One answer; (the conversation id, the answer)."""
    body: dict[str, Any] = {"messages": messages, "max_tokens": 2}
    if conversation_id:
        body["conversation_id"] = conversation_id
    resp = await d.client.post(CHAT, json=body, headers=bearer(key))
    data = await ok_json(resp)
    return resp.headers["X-Conversation-Id"], data["choices"][0]["message"]["content"]


async def listed(d: Daemon, key: str) -> list[str]:
    page = await ok_json(await d.client.get(CONVS, headers=bearer(key)))
    return [c["id"] for c in page["data"]]


def sse_payloads(text: str) -> list[Any]:
    return [line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
            for line in text.split("\n") if line.startswith("data: ")]


async def test_delete_all_takes_only_the_callers_history(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    eve = await d.app[ACCOUNTS].create_user("eve", "user")
    first, answer = await chat(d, d.key, [msg("user", "first question")])
    await chat(d, d.key, [msg("user", "first question"), msg("assistant", answer),
                          msg("user", "a follow-up")], first)
    second, _ = await chat(d, d.key, [msg("user", "second question")])
    third, _ = await chat(d, d.key, [msg("user", "third question")])
    turn = (await ok_json(await d.client.get(f"{CONVS}/{second}", headers=d.auth)))["turns"][0]
    await ok_json(await d.client.put(f"{CONVS}/{second}/turns/{turn['id']}/feedback",
                                     json={"rating": "down", "comment": "too short"},
                                     headers=d.auth))
    eves, _ = await chat(d, eve.api_key, [msg("user", "eve's own")])
    usage = await ok_json(await d.client.get("/v1/me/usage", headers=d.auth))
    keys_before = await raw_sql(d, "SELECT id, revoked_at FROM api_keys ORDER BY id")
    data_keys = await raw_sql(d, DATA_KEYS)
    account = await raw_sql(d, "SELECT name, role, disabled, erased_at, password_hash "
                               "FROM users WHERE name = 'tester'")

    got = await ok_json(await d.client.delete(CONVS, headers=d.auth))
    assert got == {"deleted": 3}

    assert await listed(d, d.key) == []
    for cid in (first, second, third):
        await error(await d.client.get(f"{CONVS}/{cid}", headers=d.auth), 404,
                    param="conversation_id")
    uid = (await raw_sql(d, "SELECT id FROM users WHERE name = 'tester'"))[0][0]
    assert await raw_sql(d, f"SELECT count(*) FROM turns WHERE user_id = {uid}") == [(0,)]
    assert await raw_sql(d, f"SELECT count(*) FROM conversations WHERE user_id = {uid}") == [(0,)]
    assert await raw_sql(d, "SELECT count(*) FROM turns WHERE feedback_rating IS NOT NULL") \
        == [(0,)]
    # Eve's history is untouched, and still opens.
    assert await listed(d, eve.api_key) == [eves]
    conv = await ok_json(await d.client.get(f"{CONVS}/{eves}", headers=bearer(eve.api_key)))
    assert conv["messages"][0] == msg("user", "eve's own")
    # Audited once, with the count; no content in the event.
    events = await raw_sql(d, "SELECT actor, target, outcome, detail FROM audit_events "
                              "WHERE action = 'history.delete_all'")
    assert events == [("tester", "user:tester", "ok", "conversations=3")]
    # The account, its keys, its data key and today's usage stay.
    assert await raw_sql(d, "SELECT id, revoked_at FROM api_keys ORDER BY id") == keys_before
    assert await raw_sql(d, DATA_KEYS) == data_keys
    assert await raw_sql(d, "SELECT name, role, disabled, erased_at, password_hash "
                            "FROM users WHERE name = 'tester'") == account
    after = await ok_json(await d.client.get("/v1/me/usage", headers=d.auth))
    assert after["requests"] == usage["requests"] and after["tokens"] == usage["tokens"]
    exported = await ok_json(await d.client.get("/v1/me/export", headers=d.auth))
    assert exported["conversations"] == [] and len(exported["api_keys"]) == 1
    assert exported["user"]["erased_at"] is None

    # Nothing left: a second call deletes nothing (and says so); new chats work as before.
    assert await ok_json(await d.client.delete(CONVS, headers=d.auth)) == {"deleted": 0}
    fresh, _ = await chat(d, d.key, [msg("user", "a new start")])
    assert await listed(d, d.key) == [fresh]
    conv = await ok_json(await d.client.get(f"{CONVS}/{fresh}", headers=d.auth))
    assert conv["messages"][0] == msg("user", "a new start") and "incomplete" not in conv


async def test_a_stream_in_another_tab_does_not_bring_data_back(make_daemon: MakeDaemon) -> None:
    """While two answers stream (one continuing a conversation, one starting a new one) the
    user deletes all: the continued one's seal fails with a clean error event and stores
    nothing; the new one is stored whole, as a new conversation of one exchange."""
    d = await make_daemon(engine=FakeEngine(model_name="fake-model", token_delay=0.05))
    old, answer = await chat(d, d.key, [msg("user", "an old question")])
    history = [msg("user", "an old question"), msg("assistant", answer), msg("user", "more")]
    going_on = await d.client.post(CHAT, headers=d.auth, json={
        "messages": history, "max_tokens": 12, "stream": True, "conversation_id": old})
    starting = await d.client.post(CHAT, headers=d.auth, json={
        "messages": [msg("user", "a brand new one")], "max_tokens": 12, "stream": True})
    assert going_on.status == 200 and starting.status == 200
    new = starting.headers["X-Conversation-Id"]
    await going_on.content.readline()  # both are generating
    await starting.content.readline()

    assert await ok_json(await d.client.delete(CONVS, headers=d.auth)) == {"deleted": 1}

    ended = sse_payloads(await going_on.text())
    # An error event names the gone conversation; the closing chunk (finish_reason) that
    # waits for the commit never comes: the answer is not given as saved.
    assert ended[-1] == "[DONE]"
    assert ended[-2]["error"]["type"] == "not_found_error", ended[-2]
    assert ended[-2]["error"]["param"] == "conversation_id"
    assert not [p for p in ended[:-2] if p["choices"] and p["choices"][0]["finish_reason"]]
    done = sse_payloads(await starting.text())
    assert done[-1] == "[DONE]"

    assert await listed(d, d.key) == [new]
    await error(await d.client.get(f"{CONVS}/{old}", headers=d.auth), 404)
    assert await raw_sql(d, f"SELECT count(*) FROM turns WHERE conversation_id = '{old}'") \
        == [(0,)]
    conv = await ok_json(await d.client.get(f"{CONVS}/{new}", headers=d.auth))
    assert "incomplete" not in conv and [t["seq"] for t in conv["turns"]] == [1]
    assert conv["messages"][0] == msg("user", "a brand new one")
    assert conv["messages"][1]["role"] == "assistant" and conv["messages"][1]["content"]
    # The audit trail tells it: the old conversation's first answer, then the delete, the
    # new conversation's answer and the failed one (no turn stored for it).
    events = await raw_sql(d, "SELECT action, outcome, target, detail FROM audit_events WHERE "
                              "action IN ('inference', 'history.delete_all') ORDER BY id")
    assert sorted(events[1:]) == sorted([
        ("history.delete_all", "ok", "user:tester", "conversations=1"),
        ("inference", "ok", f"conversation:{new}", None),
        ("inference", "error", None, "NotFound")]), events
    assert events[0] == ("inference", "ok", f"conversation:{old}", None)


async def test_a_browser_session_needs_its_csrf_token(make_daemon: MakeDaemon) -> None:
    """From the chat page (a cookie session) the delete needs the CSRF header; without it
    nothing is deleted."""
    d = await make_daemon()
    nurse = await d.app[ACCOUNTS].create_user("nurse", "user")
    cid, _ = await chat(d, nurse.api_key, [msg("user", "keep me")])
    c = d.client
    await ok_json(await c.post("/auth/login", json={"username": "nurse",
                                                    "password": nurse.password}))
    token = c.session.cookie_jar.filter_cookies(c.make_url("/"))[WEB_COOKIE].value
    await error(await c.delete(CONVS), 403, "csrf_failed")
    assert await listed(d, nurse.api_key) == [cid]
    got = await ok_json(await c.delete(CONVS, headers={"X-CSRF-Token": csrf_token(token)}))
    assert got == {"deleted": 1}
    assert await listed(d, nurse.api_key) == []


async def test_the_session_tells_where_the_password_lives(make_daemon: MakeDaemon) -> None:
    """GET /auth/session says ``account_source``: the chat page offers "Change password"
    only for a local account (a directory's password is changed in the directory)."""
    d = await make_daemon()
    nurse = await d.app[ACCOUNTS].create_user("nurse", "user")
    c = d.client
    await ok_json(await c.post("/auth/login", json={"username": "nurse",
                                                    "password": nurse.password}))
    assert (await ok_json(await c.get("/auth/session")))["account_source"] == "local"
    await raw_sql(d, "UPDATE users SET source = 'ldap' WHERE name = 'nurse'")
    assert (await ok_json(await c.get("/auth/session")))["account_source"] == "ldap"


async def test_auditors_and_keyless_callers_cannot(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    auditor = await d.app[ACCOUNTS].create_user("watcher", "auditor")
    cid, _ = await chat(d, d.key, [msg("user", "mine")])
    await error(await d.client.delete(CONVS), 401, "missing_api_key")
    await error(await d.client.delete(CONVS, headers=bearer(auditor.api_key)), 403, "forbidden")
    assert await listed(d, d.key) == [cid]
