"""Sealed conversation history on a real database (a SQLite file and a private PostgreSQL):
round trips, nothing in clear on disk, ciphertext bound to its row, crypto-shredding on
erasure, export, deletion, retention purge, master key rotation and the start-up key checks."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from deepseekd.config import AuthSettings, QuotaSettings
from deepseekd.security.keyring import (
    Keyring,
    KeyringError,
    Unreadable,
    create_master_key,
    new_data_key,
    open_sealed,
)
from deepseekd.domain.errors import DomainError
from deepseekd.domain.identity import Identity
from deepseekd.http.errors import from_domain
from tests.support.services import make_accounts
from deepseekd.services.audit import AuditLog
from deepseekd.store.db import Database
from deepseekd.config import Settings
from deepseekd.services.erasure import ErasureService
from deepseekd.services.history import HistoryService, TurnRecord
from deepseekd.services.turns import meta_of
from deepseekd.services.keys import KeyService

PROMPT = "my locker code is ZEBRA-QUARTZ-7781"
ANSWER = "remembered: MARMALADE-OBOE-4412"
FOLLOW_UP = "and the bike lock is VIOLET-CONDOR-9903"
ANSWER2 = "also remembered: TANGERINE-WALRUS-5526"
SECRETS = ("ZEBRA-QUARTZ", "MARMALADE-OBOE", "VIOLET-CONDOR", "TANGERINE-WALRUS", "locker code")
DAY = 86400

# Backend-neutral logic: SQLite is enough (keeps the PostgreSQL half to what differs).
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@dataclass
class Stack:
    db: Database
    keys: KeyService
    audit: AuditLog
    history: HistoryService
    accounts: AccountService
    keys_dir: Path
    clock: Any
    alice: Identity
    bob: Identity
    erasure: ErasureService


async def make_stack(db: Database, keys_dir: Path, clock: Any) -> Stack:
    if not keys_dir.exists():
        create_master_key(keys_dir, 1)
    keys = KeyService(db, Keyring([keys_dir]), keys_dir, clock)
    await keys.check()
    audit = AuditLog(db, keys.cached_audit_key, clock)
    accounts = make_accounts(db, clock, audit)
    people = []
    for name in ("alice", "bob"):
        await accounts.create_user(name, "user")
        uid = (await sql(db, "SELECT id FROM users WHERE name = :n", n=name))[0][0]
        people.append(Identity(uid, name, "user", "api_key"))
    keys.audit = audit
    erasure = ErasureService(Settings(), db, keys, audit, NoChat(), clock)  # type: ignore[arg-type]
    return Stack(db, keys, audit, HistoryService(db, keys, audit, clock), accounts, keys_dir,
                 clock, *people, erasure=erasure)


class NoChat:
    """No requests in flight: the erasures here run beside no daemon."""

    async def stop_user(self, user_id: int, reason: str) -> int:
        return 0


@pytest.fixture
async def stack(db: Database, tmp_path: Path, clock: Any) -> Stack:
    return await make_stack(db, tmp_path / "keys", clock)


async def sql(db: Database, statement: str, **params: Any) -> Any:
    """Raw SQL behind the services' back (what someone with database access could do)."""
    def run(s: Any) -> Any:
        result = s.execute(text(statement), params)
        return result.fetchall() if result.returns_rows else result.rowcount

    return await db.write("test.sql", run)


def turn(messages: list[dict[str, str]], answer: str, rid: str = "req") -> TurnRecord:
    return TurnRecord(messages, answer, "fake-model", 11, 4, rid, "127.0.0.1")


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


async def two_turns(s: Stack, who: Identity | None = None) -> str:
    """A conversation of two turns; the client resends the history with the second."""
    who = who or s.alice
    cid = str(uuid.uuid4())
    await s.history.record_turn(who, cid, True, turn([user(PROMPT)], ANSWER, "r1"))
    s.clock.advance(5)
    await s.history.record_turn(who, cid, False, turn(
        [user(PROMPT), assistant(ANSWER), user(FOLLOW_UP)], ANSWER2, "r2"))
    return cid


async def actions(s: Stack) -> list[str]:
    return [e["action"] for e in await s.audit.query(limit=1000)]


# --------------------------------------------------------------------------- round trip


async def test_round_trip(stack: Stack) -> None:
    t0 = stack.clock()
    cid = await two_turns(stack)
    conv = await stack.history.get_conversation(stack.alice, cid)
    assert conv["id"] == cid and conv["title"] == PROMPT
    assert conv["created_at"] == t0 and conv["updated_at"] == t0 + 5
    assert [t["seq"] for t in conv["turns"]] == [1, 2]
    first, second = conv["turns"]
    assert first["messages"] == [user(PROMPT)] and first["answer"] == ANSWER
    assert second["messages"] == [user(PROMPT), assistant(ANSWER), user(FOLLOW_UP)]
    assert second["answer"] == ANSWER2
    assert first["usage"] == {"prompt_tokens": 11, "completion_tokens": 4}
    assert first["model"] == "fake-model" and "unreadable" not in first
    # The resent history is not repeated in the flattened view.
    assert conv["messages"] == [user(PROMPT), assistant(ANSWER), user(FOLLOW_UP),
                                assistant(ANSWER2)]

    listed = await stack.history.list_conversations(stack.alice)
    assert listed == [{"id": cid, "title": PROMPT, "created_at": t0, "updated_at": t0 + 5,
                       "turns": 2, "pinned": False}]
    assert await stack.history.list_conversations(stack.bob) == []
    assert (await actions(stack)).count("inference") == 2
    assert (await stack.audit.verify()).ok


@SQLITE_ONLY
async def test_long_title_is_cut_and_unicode_survives(stack: Stack) -> None:
    cid = str(uuid.uuid4())
    prompt = "Grüße aus Köln — 東京 " * 10
    await stack.history.record_turn(stack.alice, cid, True,
                                    turn([{"role": "system", "content": "be brief"}, user(prompt)],
                                         "ok ✓"))
    conv = await stack.history.get_conversation(stack.alice, cid)
    assert conv["title"] == prompt[:60]
    assert conv["turns"][0]["messages"][1]["content"] == prompt
    assert conv["turns"][0]["answer"] == "ok ✓"


@SQLITE_ONLY
async def test_conversations_are_listed_newest_first(stack: Stack) -> None:
    older = await two_turns(stack)
    stack.clock.advance(10)
    newer = await two_turns(stack)
    assert [c["id"] for c in await stack.history.list_conversations(stack.alice)] == [newer, older]


async def test_nothing_is_stored_in_clear(stack: Stack) -> None:
    """No table holds the prompt or answer, whatever the backend (turns, titles, audit)."""
    await two_turns(stack)
    for table in ("turns", "conversations", "audit_events", "users", "user_keys"):
        rows = await sql(stack.db, f"SELECT * FROM {table}")
        assert rows, table
        dump = repr([tuple(r) for r in rows])
        for secret in SECRETS:
            assert secret not in dump, (table, secret)


async def test_sqlite_file_bytes_hold_no_content(tmp_path: Path, clock: Any) -> None:
    """The raw bytes of the SQLite database and its write-ahead log hold no content."""
    path = tmp_path / "bytes.db"
    async with Database(f"sqlite+aiosqlite:///{path}") as db:
        await db.upgrade()
        s = await make_stack(db, tmp_path / "keys", clock)
        cid = await two_turns(s)
        assert (await s.history.get_conversation(s.alice, cid))["turns"][1]["answer"] == ANSWER2
        files = [p for p in (path, tmp_path / "bytes.db-wal") if p.exists()]
        assert path in files
        raw = b"".join(p.read_bytes() for p in files)
        assert b"audit_events" in raw  # sanity: these are the database's bytes
        for secret in SECRETS:
            assert secret.encode() not in raw, secret
            assert secret.encode("utf-16-le") not in raw, secret


# --------------------------------------------------------------------------- AAD binding


async def test_ciphertext_moved_to_another_row_is_unreadable(stack: Stack) -> None:
    cid = await two_turns(stack)
    ids = [r[0] for r in await sql(stack.db, "SELECT id FROM turns WHERE conversation_id = :c "
                                   "ORDER BY seq", c=cid)]
    first, second = ids
    # Same user, same key, same conversation: only the associated data tells the rows apart.
    assert await sql(stack.db, "UPDATE turns SET answer_ct = (SELECT answer_ct FROM turns "
                     "WHERE id = :src) WHERE id = :dst", src=second, dst=first) == 1

    conv = await stack.history.get_conversation(stack.alice, cid)  # does not raise
    bad, good = conv["turns"]
    assert bad["id"] == first and bad["unreadable"] is True and bad["seq"] == 1
    assert "answer" not in bad and "messages" not in bad
    assert good["answer"] == ANSWER2 and "unreadable" not in good
    events = await stack.audit.query(action="history.unreadable")
    assert len(events) == 1
    assert events[0]["target"] == f"turn:{first}" and events[0]["outcome"] == "error"
    assert events[0]["actor"] == "alice"
    assert (await stack.audit.verify()).ok


@SQLITE_ONLY
async def test_ciphertext_moved_to_another_user_is_unreadable(stack: Stack) -> None:
    mine = await two_turns(stack, stack.alice)
    theirs = await two_turns(stack, stack.bob)
    await sql(stack.db, "UPDATE turns SET request_ct = (SELECT request_ct FROM turns WHERE "
              "conversation_id = :src AND seq = 1) WHERE conversation_id = :dst AND seq = 1",
              src=theirs, dst=mine)
    conv = await stack.history.get_conversation(stack.alice, mine)
    assert [t.get("unreadable", False) for t in conv["turns"]] == [True, False]


@SQLITE_ONLY
async def test_swapped_title_is_not_shown(stack: Stack) -> None:
    a = await two_turns(stack)
    b = str(uuid.uuid4())
    await stack.history.record_turn(stack.alice, b, True, turn([user("another title")], "x"))
    await sql(stack.db, "UPDATE conversations SET title_ct = (SELECT title_ct FROM conversations "
              "WHERE id = :src) WHERE id = :dst", src=b, dst=a)
    assert (await stack.history.get_conversation(stack.alice, a))["title"] is None


# --------------------------------------------------------------------------- ownership


async def test_other_users_and_bad_ids_are_404(stack: Stack) -> None:
    cid = await two_turns(stack)
    for bad in (cid, str(uuid.uuid4()), "not-a-uuid", cid.upper(), "", "../" + cid):
        for call in (stack.history.check_conversation, stack.history.get_conversation,
                     stack.history.delete_conversation):
            with pytest.raises(DomainError) as err:
                await call(stack.bob, bad)
            assert from_domain(err.value).status == 404 and err.value.field == "conversation_id"
    # Appending to someone else's conversation fails too, and stores nothing.
    with pytest.raises(DomainError) as err:
        await stack.history.record_turn(stack.bob, cid, False, turn([user("hi")], "x"))
    assert from_domain(err.value).status == 404
    await stack.history.check_conversation(stack.alice, cid)  # still alice's, intact
    assert len((await stack.history.get_conversation(stack.alice, cid))["turns"]) == 2


async def test_delete_conversation(stack: Stack) -> None:
    cid = await two_turns(stack)
    keep = await two_turns(stack)
    await stack.history.delete_conversation(stack.alice, cid)
    with pytest.raises(DomainError) as err:
        await stack.history.get_conversation(stack.alice, cid)
    assert from_domain(err.value).status == 404
    with pytest.raises(DomainError):
        await stack.history.delete_conversation(stack.alice, cid)
    assert await sql(stack.db, "SELECT id FROM turns WHERE conversation_id = :c", c=cid) == []
    assert [c["id"] for c in await stack.history.list_conversations(stack.alice)] == [keep]
    events = await stack.audit.query(action="history.delete")
    assert [e["target"] for e in events] == [f"conversation:{cid}"]
    assert (await stack.audit.verify()).ok


# --------------------------------------------------------------------------- retention


async def test_purge_removes_only_old_conversations(stack: Stack) -> None:
    old = await two_turns(stack)
    stack.clock.advance(200 * DAY)
    new = await two_turns(stack)
    stack.clock.advance(200 * DAY)  # old: 400 days untouched, new: 200 days
    assert await stack.history.purge(0) == 0  # 0 keeps everything
    assert await stack.history.purge(365) == 1
    assert [c["id"] for c in await stack.history.list_conversations(stack.alice)] == [new]
    assert await sql(stack.db, "SELECT id FROM turns WHERE conversation_id = :c", c=old) == []
    events = await stack.audit.query(action="history.retention_purge")
    assert len(events) == 1 and "1 conversations" in events[0]["detail"]
    assert await stack.history.purge(365) == 0  # nothing more, and no empty event
    assert len(await stack.audit.query(action="history.retention_purge")) == 1


@SQLITE_ONLY
async def test_a_new_turn_keeps_a_conversation_alive(stack: Stack) -> None:
    cid = await two_turns(stack)
    stack.clock.advance(300 * DAY)
    await stack.history.record_turn(stack.alice, cid, False, turn([user("still here")], "yes"))
    stack.clock.advance(100 * DAY)  # created 400 days ago, last touched 100 days ago
    assert await stack.history.purge(365) == 0
    assert len((await stack.history.get_conversation(stack.alice, cid))["turns"]) == 3


# --------------------------------------------------------------------------- erasure


async def test_erase_user_crypto_shreds(stack: Stack) -> None:
    s = stack
    cid = await two_turns(s, s.alice)
    bobs = await two_turns(s, s.bob)
    row = (await sql(s.db, "SELECT id, conversation_id, seq, choice, model, prompt_tokens, "
                     "completion_tokens, reasoning_tokens, created_at, stopped, answer_ct "
                     "FROM turns WHERE conversation_id = :c AND seq = 1", c=cid))[0]
    backup_ct = bytes(row.answer_ct)
    backup_key_row = (await sql(s.db, "SELECT kek_version, wrapped FROM user_keys WHERE "
                                "user_id = :u", u=s.alice.user_id))[0]
    aad = meta_of(row, s.alice.user_id).aad("answer")
    old_key = await s.db.read("test", lambda session: s.keys.user_key(
        session, s.alice.user_id, create=False))
    assert old_key is not None
    assert open_sealed(old_key, backup_ct, aad) == ANSWER.encode()  # the backup is real

    result = await s.erasure.erase("alice")
    assert {k: result[k] for k in ("name", "erased", "data_key_destroyed",
                                   "conversations_deleted", "requests_cancelled")} == {
        "name": "alice", "erased": True, "data_key_destroyed": True,
        "conversations_deleted": 1, "requests_cancelled": 0}
    assert result["master_key_version"] == 2  # the epoch: master key v1 is gone

    # The data key is gone from the database, and from the service's cache.
    assert await sql(s.db, "SELECT user_id FROM user_keys WHERE user_id = :u",
                     u=s.alice.user_id) == []
    assert await s.db.read("test", lambda session: s.keys.user_key(
        session, s.alice.user_id, create=False)) is None
    # No key the database still holds (bob's, the audit key), wrapped by any master key
    # version, is alice's, and none of them, nor a fresh one, opens the backed-up turn.
    candidates = [new_data_key(), s.keys.cached_audit_key()]
    for uid, version, wrapped in await sql(s.db, "SELECT user_id, kek_version, wrapped FROM "
                                           "user_keys"):
        candidates.append(s.keys.keyring.unwrap(version, bytes(wrapped),
                                                b"user-key:%d" % uid))
    for name, version, wrapped in await sql(s.db, "SELECT name, kek_version, wrapped FROM "
                                            "service_keys"):
        candidates.append(s.keys.keyring.unwrap(version, bytes(wrapped),
                                                b"service-key:" + name.encode()))
    # fresh, audit (cached), bob's, the audit, TOTP and single sign-on service keys
    assert len(candidates) == 6
    for key in candidates:
        assert key != old_key
        with pytest.raises(Unreadable):
            open_sealed(key, backup_ct, aad)
    # And the backed-up wrapped key row no longer unwraps: its master key version was
    # retired by the erasure (the file is gone).
    assert backup_key_row[0] == 1
    with pytest.raises(KeyringError, match="not available"):
        s.keys.keyring.unwrap(1, bytes(backup_key_row[1]), b"user-key:%d" % s.alice.user_id)

    # Rows and account.
    for table in ("conversations", "turns"):
        assert await sql(s.db, f"SELECT * FROM {table} WHERE user_id = :u",
                         u=s.alice.user_id) == []
    u = (await sql(s.db, "SELECT disabled, erased_at, password_hash, totp_secret FROM users "
                   "WHERE name = 'alice'"))[0]
    assert bool(u[0]) is True and u[1] == s.clock() and u[2] is None and u[3] is None
    revoked = await sql(s.db, "SELECT revoked_at FROM api_keys WHERE user_id = :u",
                        u=s.alice.user_id)
    assert revoked and all(r[0] is not None for r in revoked)

    # Bob is untouched.
    assert (await s.history.get_conversation(s.bob, bobs))["messages"][-1]["content"] == ANSWER2
    events = await s.audit.query(action="user.erase")
    assert len(events) == 1 and events[0]["target"] == "user:alice"
    assert events[0]["role"] == "cli" and events[0]["detail"] == (
        "1 conversations, 0 requests cancelled, data key destroyed: True")
    assert (await s.audit.verify()).ok

    # Erasing again is harmless; an unknown user is a 404.
    again = await s.erasure.erase("alice")
    assert again["data_key_destroyed"] is False and again["conversations_deleted"] == 0
    with pytest.raises(DomainError) as err:
        await s.erasure.erase("nobody")
    assert from_domain(err.value).status == 404


@SQLITE_ONLY
async def test_erase_by_an_admin_names_the_admin(stack: Stack) -> None:
    admin = Identity(999, "root", "admin", "session")
    await two_turns(stack)
    await stack.erasure.erase("alice", by=admin)
    ev = (await stack.audit.query(action="user.erase"))[0]
    assert (ev["actor"], ev["actor_id"], ev["role"]) == ("root", 999, "admin")


# --------------------------------------------------------------------------- export


async def test_export_user(stack: Stack) -> None:
    cid = await two_turns(stack)
    bobs = await two_turns(stack, stack.bob)
    data = await stack.history.export_user("alice")
    assert set(data) == {"user", "api_keys", "daily_usage", "conversations"}
    assert data["user"]["name"] == "alice" and data["user"]["role"] == "user"
    assert data["user"]["disabled"] is False and data["user"]["erased_at"] is None
    assert len(data["api_keys"]) == 1 and data["api_keys"][0]["label"] == "initial"
    assert "key_hash" not in data["api_keys"][0]
    assert [c["id"] for c in data["conversations"]] == [cid]
    conv = data["conversations"][0]
    assert conv["messages"] == [user(PROMPT), assistant(ANSWER), user(FOLLOW_UP),
                                assistant(ANSWER2)]
    text_ = json.dumps(data)
    assert "TANGERINE-WALRUS" in text_ and bobs not in text_
    assert set(data["user"]) == {"name", "role", "created_at", "disabled", "erased_at",
                                 "daily_request_limit", "daily_token_limit", "source",
                                 "external_id", "groups", "directory_seen_at"}
    assert (data["user"]["source"], data["user"]["groups"]) == ("local", [])
    ev = (await stack.audit.query(action="user.export"))[0]
    assert ev["target"] == "user:alice"
    with pytest.raises(DomainError) as err:
        await stack.history.export_user("nobody")
    assert from_domain(err.value).status == 404


@SQLITE_ONLY
async def test_export_after_erasure_is_empty(stack: Stack) -> None:
    await two_turns(stack)
    await stack.erasure.erase("alice")
    data = await stack.history.export_user("alice")
    assert data["conversations"] == [] and data["user"]["disabled"] is True
    assert data["user"]["erased_at"] is not None


# --------------------------------------------------------------------------- rotation


async def test_rotation_rewraps_and_retires(stack: Stack) -> None:
    s = stack
    cid = await two_turns(s)
    await two_turns(s, s.bob)
    before = {r[0]: bytes(r[1]) for r in await sql(s.db, "SELECT user_id, wrapped FROM user_keys")}
    audit_before = bytes((await sql(s.db, "SELECT wrapped FROM service_keys"))[0][0])
    assert len(before) == 2

    retired, current = await s.keys.rotate(None)
    assert (retired, current) == ([1], 2)
    assert sorted(p.name for p in s.keys_dir.iterdir()) == ["master-v2.key"]
    assert s.keys.keyring.versions == [2]

    rows = await sql(s.db, "SELECT user_id, kek_version, wrapped FROM user_keys")
    assert {r[1] for r in rows} == {2}
    assert all(bytes(r[2]) != before[r[0]] for r in rows)
    svc = (await sql(s.db, "SELECT kek_version, wrapped FROM service_keys"))[0]
    assert svc[0] == 2 and bytes(svc[1]) != audit_before
    checks = {r[0]: r[1] for r in await sql(s.db, "SELECT version, retired_at FROM key_checks")}
    assert checks[1] is not None and checks[2] is None

    # A process that starts now (nothing cached) with only the new key reads everything.
    keys2 = KeyService(s.db, Keyring([s.keys_dir]), s.keys_dir, s.clock)
    await keys2.check()
    audit2 = AuditLog(s.db, keys2.cached_audit_key, s.clock)
    assert keys2.cached_audit_key() == s.keys.cached_audit_key()
    history2 = HistoryService(s.db, keys2, audit2, s.clock)
    conv = await history2.get_conversation(s.alice, cid)
    assert conv["title"] == PROMPT and conv["turns"][0]["answer"] == ANSWER
    assert not any(t.get("unreadable") for t in conv["turns"])
    assert (await audit2.verify()).ok
    # New turns go on under the new key, for old and new users alike.
    await history2.record_turn(s.alice, cid, False, turn([user("after rotation")], "fine"))
    assert (await history2.get_conversation(s.alice, cid))["turns"][-1]["answer"] == "fine"


# --------------------------------------------------------------------------- start-up checks


async def test_wrong_master_key_is_refused(stack: Stack, tmp_path: Path) -> None:
    other = tmp_path / "other-keys"
    create_master_key(other, 1)  # same version, different bytes
    with pytest.raises(KeyringError, match="does not match"):
        await KeyService(stack.db, Keyring([other]), other, stack.clock).check()


@SQLITE_ONLY
async def test_unknown_newer_master_key_is_refused(stack: Stack, tmp_path: Path) -> None:
    other = tmp_path / "other-keys"
    create_master_key(other, 1)
    (other / "master-v1.key").write_text((stack.keys_dir / "master-v1.key").read_text())
    create_master_key(other, 7)  # a key file from another installation
    with pytest.raises(KeyringError, match="version 7 is not known"):
        await KeyService(stack.db, Keyring([other]), other, stack.clock).check()


@SQLITE_ONLY
async def test_missing_live_master_key_is_refused(stack: Stack, tmp_path: Path) -> None:
    await stack.keys.rotate(None)
    only_old = tmp_path / "old-keys"
    create_master_key(only_old, 1)
    with pytest.raises(KeyringError, match="master key version 2 is missing"):
        await KeyService(stack.db, Keyring([only_old]), only_old, stack.clock).check()


async def test_no_master_key_files(tmp_path: Path) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(KeyringError, match="no master key found"):
        Keyring([empty, tmp_path / "missing-too"])


async def test_key_file_readable_by_others_is_refused(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = create_master_key(tmp_path / "keys", 1)
    path.chmod(0o644)
    with pytest.raises(KeyringError, match="readable by others"):
        Keyring([tmp_path / "keys"])


@SQLITE_ONLY
async def test_wrapped_keys_without_key_check_are_refused(stack: Stack) -> None:
    """A database that holds wrapped keys but whose key checks were removed is not
    silently re-initialised with whatever key file is present."""
    await two_turns(stack)
    await sql(stack.db, "DELETE FROM key_checks")
    with pytest.raises(KeyringError, match="no key check"):
        await KeyService(stack.db, Keyring([stack.keys_dir]), stack.keys_dir, stack.clock).check()


# --------------------------------------------------------------------------- key lifecycle

async def test_rolled_back_first_turn_does_not_lose_the_data_key(stack: Stack) -> None:
    """A user's first record_turn fails after the data key was made (here: appending to a
    conversation that does not exist); the next one must still store the key it seals with.
    Regression: the key was once cached before its transaction committed."""
    s = stack
    with pytest.raises(DomainError):
        await s.history.record_turn(s.bob, str(uuid.uuid4()), False, turn([user("x")], "y"))
    cid = str(uuid.uuid4())
    await s.history.record_turn(s.bob, cid, True, turn([user(PROMPT)], ANSWER))
    # A restarted process (nothing cached) must read it.
    keys2 = KeyService(s.db, Keyring([s.keys_dir]), s.keys_dir, s.clock)
    await keys2.check()
    history2 = HistoryService(s.db, keys2, AuditLog(s.db, keys2.cached_audit_key, s.clock),
                              s.clock)
    conv = await history2.get_conversation(s.bob, cid)
    assert conv["turns"][0].get("answer") == ANSWER, conv["turns"]
    assert await sql(s.db, "SELECT user_id FROM user_keys WHERE user_id = :u",
                     u=s.bob.user_id) != []


async def test_concurrent_first_turns_share_one_data_key(stack: Stack) -> None:
    """A user's first two turns at once: both get sealed with the one stored key."""
    s = stack
    cids = [str(uuid.uuid4()) for _ in range(4)]
    await asyncio.gather(*(s.history.record_turn(s.bob, cid, True, turn([user(PROMPT)], ANSWER))
                           for cid in cids))
    assert len(await sql(s.db, "SELECT user_id FROM user_keys WHERE user_id = :u",
                         u=s.bob.user_id)) == 1
    keys2 = KeyService(s.db, Keyring([s.keys_dir]), s.keys_dir, s.clock)
    await keys2.check()
    history2 = HistoryService(s.db, keys2, AuditLog(s.db, keys2.cached_audit_key, s.clock),
                              s.clock)
    for cid in cids:
        conv = await history2.get_conversation(s.bob, cid)
        assert conv["turns"][0].get("answer") == ANSWER, conv["turns"]
    assert (await s.audit.verify()).ok
