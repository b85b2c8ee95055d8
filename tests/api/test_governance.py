"""The governance promises under concurrency, faults and abuse, as the security review tried
them against the daemon: erasure while an answer streams, a stranger's wrong passwords,
login floods and slow bodies, sessions and their credentials, audit completeness of
streams and refusals, hostile JSON, the reasoning policy on completions, LoRA copies.
Each test failed on the code before these fixes."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from deepseekd.http.state import ACCOUNTS, AUDIT, SERVICES
from tests.api.helpers import CHAT, CHAT_BODY, bearer, code, error, ok_json, secret_of
from tests.fakes import FakeEngine

MakeDaemon = Any
FakeClock = Any
STREAM = {"messages": [{"role": "user", "content": "tell me everything"}], "stream": True}


@asynccontextmanager
async def from_address(d: Any, address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose connections come from another loopback address (another machine, as
    the daemon sees it)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def url(d: Any, path: str) -> str:
    return str(d.client.make_url(path))


def db_rows(d: Any, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(Path(d.settings.data_dir) / "deepseekd.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def events(d: Any, **query: Any) -> list[dict[str, Any]]:
    return await d.app[AUDIT].query(limit=1000, **query)


async def read_events(resp: Any, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        line = await asyncio.wait_for(resp.content.readline(), 10)
        assert line, "stream ended early"
        if line.strip():
            out.append(line.decode().strip())
    return out


# --------------------------------------------------------------------------- erasure


async def test_erasure_while_the_users_answer_streams(make_daemon: MakeDaemon) -> None:
    """The erase used to answer data_key_destroyed while the request in flight went on to
    store a NEW data key, conversation and turn (the admin export then showed the prompt).
    Now the request is stopped, nothing of the user is stored again, and the erase says so."""
    fake = FakeEngine(token_delay=0.05)
    d = await make_daemon(engine=fake)
    root = await d.app[ACCOUNTS].create_user("root", "admin")
    nurse = await d.app[ACCOUNTS].create_user("nurse", "user")
    resp = await d.client.post(CHAT, json={**STREAM, "max_tokens": 40},
                               headers=bearer(nurse.api_key), timeout=None)
    assert resp.status == 200
    await read_events(resp, 3)  # the role chunk and two tokens: generating
    erased = await ok_json(await d.client.post(
        "/admin/api/users/nurse/erase",
        headers={**bearer(root.api_key), "X-TOTP": code(secret_of(root.totp_uri), d.app[SERVICES].clock())}))
    assert erased["requests_cancelled"] == 1 and erased["erased"] is True
    resp.close()
    await asyncio.sleep(0.2)
    uid = db_rows(d, "SELECT id FROM users WHERE name = 'nurse'")[0][0]
    assert db_rows(d, f"SELECT count(*) FROM user_keys WHERE user_id = {uid}") == [(0,)]
    assert db_rows(d, f"SELECT count(*) FROM turns WHERE user_id = {uid}") == [(0,)]
    assert db_rows(d, f"SELECT count(*) FROM conversations WHERE user_id = {uid}") == [(0,)]
    export = await d.app[SERVICES].history.export_user("nurse")
    assert export["conversations"] == [] and export["user"]["erased_at"]
    aborted = await events(d, action="inference.abort")
    assert [(e["actor"], e["detail"]) for e in aborted] == [("nurse", "erased")]
    assert (await d.app[AUDIT].verify()).ok


async def test_an_erasure_from_another_process_fences_what_is_in_flight(
        make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """`deepseekd user erase` runs in its own process: it cannot stop the daemon's request,
    but the fence it commits first keeps that request from storing anything."""
    from deepseekd.services.container import open_services

    gate = asyncio.Event()
    fake = FakeEngine()
    d = await make_daemon(engine=fake)
    nurse = await d.app[ACCOUNTS].create_user("nurse", "user")
    fake.generate_gate = gate
    pending = asyncio.ensure_future(d.client.post(CHAT, json={**CHAT_BODY, "max_tokens": 3},
                                                  headers=bearer(nurse.api_key)))
    while fake.in_flight < 1:
        await asyncio.sleep(0.01)
    async with open_services(d.settings) as cli:  # a second process, as the CLI is
        result = await cli.erasure.erase("nurse")
    assert result["requests_cancelled"] == 0  # not this process's to stop
    gate.set()
    resp = await pending
    assert resp.status in (409, 200)
    uid = db_rows(d, "SELECT id FROM users WHERE name = 'nurse'")[0][0]
    assert db_rows(d, f"SELECT count(*) FROM user_keys WHERE user_id = {uid}") == [(0,)]
    assert db_rows(d, f"SELECT count(*) FROM turns WHERE user_id = {uid}") == [(0,)]


async def test_erasure_makes_a_backup_from_before_unreadable(make_daemon: MakeDaemon) -> None:
    """A copy of the database taken before the erasure held the wrapped data key, which the
    live master key opened. Now the erasure retires that master key version; and the file
    and its WAL no longer hold the destroyed key."""
    from deepseekd.security.keyring import Keyring, KeyringError

    d = await make_daemon()
    await d.post_json(CHAT, CHAT_BODY)
    data = Path(d.settings.data_dir)
    uid = db_rows(d, "SELECT id FROM users WHERE name = 'tester'")[0][0]
    (version, wrapped), = db_rows(d, f"SELECT kek_version, wrapped FROM user_keys "
                                     f"WHERE user_id = {uid}")
    backup = sqlite3.connect(":memory:")
    sqlite3.connect(data / "deepseekd.db").backup(backup)
    result = await d.app[SERVICES].erasure.erase("tester")
    assert result["master_key_version"] == version + 1
    live = Keyring.for_data_dir(data)
    assert version not in live.versions
    with pytest.raises(KeyringError, match="not available"):
        live.unwrap(version, wrapped, b"user-key:%d" % uid)
    for name in ("deepseekd.db", "deepseekd.db-wal"):
        path = data / name
        if path.exists():
            assert bytes(wrapped) not in path.read_bytes(), name


# --------------------------------------------------------------------------- sign-ins


async def test_a_strangers_wrong_passwords_do_not_lock_out_the_admin(
        make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d = await make_daemon(clock=clock)
    root = await d.app[ACCOUNTS].create_user("root", "admin")
    secret = secret_of(root.totp_uri)
    async with from_address(d, "127.0.0.2") as stranger:
        for _ in range(5):
            resp = await stranger.post(url(d, "/auth/login"),
                                       json={"username": "root", "password": "guess-guess-1"})
            await error(resp, 401, "login_failed")
        locked = {}
        for name in ("root", "no-such-user"):
            for _ in range(5 if name != "root" else 0):
                await stranger.post(url(d, "/auth/login"),
                                    json={"username": name, "password": "guess-guess-1"})
            resp = await stranger.post(url(d, "/auth/login"),
                                       json={"username": name, "password": root.password})
            err = await error(resp, 429, "too_many_attempts")
            assert resp.headers["Retry-After"].isdigit()
            assert "try again after" in err["message"] and "ask IT" in err["message"]
            locked[name] = err["message"]
        assert locked["root"] == locked["no-such-user"]  # nothing revealed
    # The admin, from the desk: password and TOTP, and the API key with a TOTP code.
    body = await ok_json(await d.client.post("/admin/api/login", json={
        "username": "root", "password": root.password, "totp": code(secret, clock())}))
    assert body["token"].startswith("dss-")
    clock.advance(30)
    await ok_json(await d.client.get("/admin/api/users", headers={
        **bearer(root.api_key), "X-TOTP": code(secret, clock())}))
    lockouts = await events(d, action="account.lockout")
    assert {e["client"] for e in lockouts} == {"127.0.0.2"}
    denied = await events(d, action="web.login")
    assert {e["client"] for e in denied} == {"127.0.0.2"}


async def test_unlock_reset_enable_through_the_admin_api(make_daemon: MakeDaemon,
                                                         clock: FakeClock) -> None:
    d = await make_daemon(clock=clock)
    root = await d.app[ACCOUNTS].create_user("root", "admin")
    nurse = await d.app[ACCOUNTS].create_user("nurse", "user")
    secret = secret_of(root.totp_uri)

    def admin() -> dict[str, str]:
        clock.advance(30)
        return {**bearer(root.api_key), "X-TOTP": code(secret, clock())}

    for _ in range(5):
        await d.client.post("/auth/login", json={"username": "nurse", "password": "wrong-wrong"})
    users = {u["name"]: u for u in (await ok_json(await d.client.get(
        "/admin/api/users", headers=admin())))["users"]}
    assert users["nurse"]["locked"]
    lifted = await ok_json(await d.client.post("/admin/api/users/nurse/unlock", headers=admin()))
    assert lifted["locks_lifted"] == 1
    session = await ok_json(await d.client.post(
        "/auth/login", json={"username": "nurse", "password": nurse.password}))
    reset = await ok_json(await d.client.post("/admin/api/users/nurse/reset-password",
                                              headers=admin()))
    assert reset["must_change_password"] and reset["password"] != nurse.password
    # The reset ended the session; the one-time password only opens the change form.
    await error(await d.client.get("/auth/session"), 401)
    d.client.session.cookie_jar.clear()
    first = await ok_json(await d.client.post(
        "/auth/login", json={"username": "nurse", "password": reset["password"]}))
    assert first["password_change_required"] is True
    csrf = {"X-CSRF-Token": first["csrf_token"]}
    await error(await d.client.post(CHAT, json=CHAT_BODY, headers=csrf), 403,
                "password_change_required")
    await ok_json(await d.client.post("/auth/password", headers=csrf, json={
        "current_password": reset["password"], "new_password": "my-own-password-1"}))
    assert (await ok_json(await d.client.get("/auth/session")))["password_change_required"] is False
    await ok_json(await d.client.post(CHAT, json=CHAT_BODY, headers=csrf))
    await ok_json(await d.client.post("/admin/api/users/nurse/disable", headers=admin()))
    await error(await d.client.get("/auth/session"), 401)  # disabling ends it too
    await error(await d.client.post(CHAT, json=CHAT_BODY, headers=bearer(nurse.api_key)), 401)
    await ok_json(await d.client.post("/admin/api/users/nurse/enable", headers=admin()))
    await ok_json(await d.client.post(CHAT, json=CHAT_BODY, headers=bearer(nurse.api_key)))
    actions = [e["action"] for e in await events(d, actor="root")]
    for action in ("user.unlock", "user.password_reset", "user.disable", "user.enable"):
        assert action in actions
    assert "user.password_change" in [e["action"] for e in await events(d, actor="nurse")]


async def test_a_session_opened_with_a_key_ends_when_the_key_is_revoked(
        make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d = await make_daemon(clock=clock)
    root = await d.app[ACCOUNTS].create_user("root", "admin")
    secret = secret_of(root.totp_uri)
    key_id, key = await d.app[ACCOUNTS].create_key("root", "script")
    token = (await ok_json(await d.client.post("/admin/api/login", json={
        "username": "root", "api_key": key, "totp": code(secret, clock())})))["token"]
    d.client.session.cookie_jar.clear()
    await ok_json(await d.client.get("/admin/api/session", headers=bearer(token)))
    clock.advance(30)
    await ok_json(await d.client.delete(f"/admin/api/keys/{key_id}", headers={
        **bearer(root.api_key), "X-TOTP": code(secret, clock())}))
    await error(await d.client.get("/admin/api/session", headers=bearer(token)), 401)


async def test_a_login_flood_gets_429_and_honest_chats_go_on(make_daemon: MakeDaemon) -> None:
    """100 clients posting logins used to run Argon2 on the event loop inside the write
    lock: honest chats slowed to seconds and some got 503 audit_unavailable."""
    d = await make_daemon(env={"DEEPSEEKD_AUTH__LOGIN_ATTEMPTS_PER_MINUTE": "20"})
    statuses: list[int] = []

    async def flood(session: aiohttp.ClientSession, i: int) -> None:
        async with session.post(url(d, "/auth/login"), json={
                "username": f"user{i}", "password": "wrong-password-1"}) as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert resp.headers["Retry-After"].isdigit()

    async with from_address(d, "127.0.0.3") as flooder:
        honest = [d.post_json(CHAT, CHAT_BODY) for _ in range(10)]
        await asyncio.gather(*(flood(flooder, i) for i in range(100)), *honest)
    assert set(statuses) <= {401, 429} and statuses.count(429) >= 80


# --------------------------------------------------------------------------- slow bodies


async def test_slow_bodies_time_out_before_taking_a_slot(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(env={"DEEPSEEKD_SERVER__BODY_TIMEOUT_S": "0.5",
                               "DEEPSEEKD_SERVER__MAX_QUEUED_REQUESTS": "2"})
    server = d.client.server
    socks = []
    for _ in range(4):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + d.key.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{")
        await writer.drain()
        socks.append((reader, writer))
    # Honest requests are served while the slow ones hold their sockets (no slot is taken).
    for _ in range(3):
        await d.post_json(CHAT, CHAT_BODY)
    for reader, writer in socks:
        answer = await asyncio.wait_for(reader.read(4096), 10)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"body_timeout" in answer
        writer.close()
    assert d.app[SERVICES].chat.admitted == 0


async def test_one_identity_cannot_take_every_slot(make_daemon: MakeDaemon) -> None:
    gate = asyncio.Event()
    fake = FakeEngine()
    d = await make_daemon(engine=fake, env={"DEEPSEEKD_SERVER__MAX_CONCURRENT_PER_USER": "2"})
    other = await d.app[ACCOUNTS].create_user("other", "user")
    fake.generate_gate = gate
    held = [asyncio.ensure_future(d.post(CHAT, CHAT_BODY)) for _ in range(2)]
    while fake.in_flight < 2:
        await asyncio.sleep(0.01)
    resp = await d.post(CHAT, CHAT_BODY)
    await error(resp, 429, "too_many_concurrent_requests")
    assert resp.headers["Retry-After"] == "1"
    other_call = asyncio.ensure_future(d.client.post(CHAT, json=CHAT_BODY,
                                                     headers=bearer(other.api_key)))
    while fake.in_flight < 3:
        await asyncio.sleep(0.01)
    gate.set()
    for t in [*held, other_call]:
        assert (await t).status == 200
    quota = await ok_json(await d.client.get("/auth/session", headers=d.auth))
    assert quota["quota"]["remaining"] == 500 - 2  # the refused one cost nothing


# --------------------------------------------------------------------------- hostile JSON


async def test_deep_json_with_a_lone_surrogate_is_a_400_and_costs_nothing(
        make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    raw = ('{"messages": [{"role": "user", "content": "x"}], "junk": '
           + "[" * 900 + '"\\ud800"' + "]" * 900 + "}").encode()
    resp = await d.client.post(CHAT, data=raw, headers={**d.auth,
                                                        "Content-Type": "application/json"})
    await error(resp, 400, "invalid_json")
    quota = await ok_json(await d.client.get("/auth/session", headers=d.auth))
    assert quota["quota"]["remaining"] == 500


# --------------------------------------------------------------------------- streams


async def test_a_client_that_read_every_chunk_then_left_still_leaves_its_turn(
        make_daemon: MakeDaemon) -> None:
    """It used to leave only inference.start: no closing event, no HMACs, no history."""
    d = await make_daemon()
    before = db_rows(d, "SELECT count(*) FROM turns")[0][0]
    resp = await d.post(CHAT, {**STREAM, "max_tokens": 3})
    body = await resp.text()
    assert body.endswith("data: [DONE]\n\n")
    # Now the same, leaving right after the last token, before [DONE].
    resp = await d.post(CHAT, {**STREAM, "max_tokens": 3, "n": 2})
    await read_events(resp, 1 + 3)  # role chunk, three steps (both choices per step)
    resp.close()
    for _ in range(100):
        if db_rows(d, "SELECT count(*) FROM turns")[0][0] == before + 1 + 2:
            break
        await asyncio.sleep(0.05)
    assert db_rows(d, "SELECT count(*) FROM turns")[0][0] == before + 1 + 2  # both choices
    assert db_rows(d, "SELECT count(*) FROM turns WHERE choice = 1")[0][0] == 1
    closing = [e for e in await events(d) if e["action"] in ("inference", "inference.abort")]
    assert len(closing) == 2 and all(e["answer_hmac"] for e in closing)


async def test_stop_during_the_first_answer_keeps_the_question(make_daemon: MakeDaemon) -> None:
    """Stop during the first answer of a new chat lost the question, and every follow-up
    failed with `no conversation` (each costing quota). Now the stopped turn is stored,
    marked stopped, the conversation listed, and a follow-up works."""
    d = await make_daemon(engine=FakeEngine(token_delay=0.05))
    resp = await d.post(CHAT, {**STREAM, "max_tokens": 40})
    cid = resp.headers["X-Conversation-Id"]
    await read_events(resp, 3)
    resp.close()
    for _ in range(100):
        listed = await ok_json(await d.client.get("/v1/conversations", headers=d.auth))
        if listed["data"]:
            break
        await asyncio.sleep(0.05)
    assert [c["id"] for c in listed["data"]] == [cid]
    conv = await ok_json(await d.client.get(f"/v1/conversations/{cid}", headers=d.auth))
    (turn,) = conv["turns"]
    assert turn["stopped"] is True and turn["messages"][0]["content"] == "tell me everything"
    follow = await d.post_json(CHAT, {"messages": [{"role": "user", "content": "go on"}],
                                      "conversation_id": cid, "max_tokens": 2})
    assert follow["choices"][0]["message"]["content"]
    aborts = await events(d, action="inference.abort")
    assert len(aborts) == 1 and aborts[0]["completion_tokens"] >= 2


# --------------------------------------------------------------------------- turn metadata


@pytest.mark.parametrize("column,value", [("seq", "seq + 10"), ("model", "'other-model'"),
                                          ("completion_tokens", "completion_tokens + 1"),
                                          ("created_at", "created_at - 86400"),
                                          ("stopped", "1")])
async def test_a_turns_metadata_cannot_change_unnoticed(make_daemon: MakeDaemon, column: str,
                                                        value: str) -> None:
    d = await make_daemon()
    first = await d.post(CHAT, CHAT_BODY)
    cid = first.headers["X-Conversation-Id"]
    await d.post_json(CHAT, {**CHAT_BODY, "conversation_id": cid})
    conn = sqlite3.connect(Path(d.settings.data_dir) / "deepseekd.db")
    conn.execute(f"UPDATE turns SET {column} = {value} WHERE conversation_id = ? AND seq = 1",
                 (cid,))
    conn.commit()
    conn.close()
    conv = await ok_json(await d.client.get(f"/v1/conversations/{cid}", headers=d.auth))
    assert [t.get("unreadable", False) for t in conv["turns"]].count(True) == 1
    assert await events(d, action="history.unreadable")


async def test_a_deleted_last_turn_shows(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    first = await d.post(CHAT, CHAT_BODY)
    cid = first.headers["X-Conversation-Id"]
    await d.post_json(CHAT, {**CHAT_BODY, "conversation_id": cid})
    conn = sqlite3.connect(Path(d.settings.data_dir) / "deepseekd.db")
    conn.execute("DELETE FROM turns WHERE conversation_id = ? AND seq = 2", (cid,))
    conn.commit()
    conn.close()
    conv = await ok_json(await d.client.get(f"/v1/conversations/{cid}", headers=d.auth))
    assert "2 requests were stored, 1 are there" == conv["incomplete"]
    assert await events(d, action="history.incomplete")


# --------------------------------------------------------------------------- reasoning


async def test_completions_hide_the_reasoning_from_roles_that_may_not_see_it(
        make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=FakeEngine(think=4, max_model_len=256),
                          env={"DEEPSEEKD_REASONING__RETURN_TO_ROLES": "admin"})
    body = await d.post_json("/v1/completions", {"prompt": "why", "max_tokens": 12})
    text = body["choices"][0]["text"]
    assert "<think>" not in text and "r0" not in text and "tok0" in text
    await error(await d.post("/v1/completions", {"prompt": "why", "max_tokens": 12,
                                                 "logprobs": 1}), 400, param="logprobs")


# --------------------------------------------------------------------------- rotation


async def test_rotation_with_systemd_credentials_is_a_409_and_audited(
        make_daemon: MakeDaemon, clock: FakeClock, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    d = await make_daemon(clock=clock)
    root = await d.app[ACCOUNTS].create_user("root", "admin")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    keys_before = sorted(os.listdir(Path(d.settings.data_dir) / "keys"))
    resp = await d.client.post("/admin/api/keys/rotate", headers={
        **bearer(root.api_key), "X-TOTP": code(secret_of(root.totp_uri), clock())})
    await error(resp, 409, "credentials_keys")
    assert sorted(os.listdir(Path(d.settings.data_dir) / "keys")) == keys_before
    (refused,) = await events(d, action="keys.rotate")
    assert refused["outcome"] == "denied" and refused["actor"] == "root"
