"""The audit log against a real database (a SQLite file and a private PostgreSQL): the keyed
hash chain verifies, and every kind of tampering done behind the daemon's back with raw SQL
is caught, naming the first bad event. Plus the ``deepseekd audit verify`` command, concurrent
appends, and the content HMACs that stand in for content."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from deepseekd.config import AuthSettings, QuotaSettings
from deepseekd.security.keyring import Keyring, create_master_key, new_data_key
from deepseekd.domain.identity import Identity
from tests.support.services import make_accounts
from deepseekd.domain.audit import CHAIN_FIELDS, GENESIS, Event
from deepseekd.security.chain import chain_hash
from deepseekd.services.audit import AuditLog
from deepseekd.store.db import Database
from deepseekd.services.history import HistoryService, TurnRecord
from deepseekd.services.keys import KeyService

REPO = Path(__file__).resolve().parents[2]
HEX64 = re.compile(r"^[0-9a-f]{64}$")
N_EVENTS = 10

# Backend-neutral logic: SQLite is enough (keeps the PostgreSQL half to what differs).
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@dataclass
class Stack:
    db: Database
    keys: KeyService
    audit: AuditLog
    keys_dir: Path


async def make_stack(db: Database, keys_dir: Path, clock: Any) -> Stack:
    """What the daemon does at start-up: master key on disk, key check, audit log."""
    if not keys_dir.exists():
        create_master_key(keys_dir, 1)
    keys = KeyService(db, Keyring([keys_dir]), keys_dir, clock)
    await keys.check()
    return Stack(db, keys, AuditLog(db, keys.cached_audit_key, clock), keys_dir)


@pytest.fixture
async def stack(db: Database, tmp_path: Path, clock: Any) -> Stack:
    return await make_stack(db, tmp_path / "keys", clock)


async def append_events(audit: AuditLog, clock: Any, n: int = N_EVENTS) -> list[int]:
    ids = []
    for i in range(1, n + 1):
        clock.advance(1)
        ids.append(await audit.append(Event(
            action=f"test.action{i % 3}", actor=f"user{i}", actor_id=i, role="user",
            target=f"thing:{i}", outcome="ok", detail=f"event number {i}")))
    return ids


async def sql(db: Database, statement: str, **params: Any) -> Any:
    """Raw SQL behind the services' back (what someone with database access could do)."""
    def run(s: Any) -> Any:
        result = s.execute(text(statement), params)
        return result.fetchall() if result.returns_rows else result.rowcount

    return await db.write("test.sql", run)


async def raw_events(db: Database) -> list[dict[str, Any]]:
    cols = ", ".join((*CHAIN_FIELDS, "prev_hash", "hash"))
    rows = await sql(db, f"SELECT {cols} FROM audit_events ORDER BY id")
    return [dict(r._mapping) for r in rows]


# --------------------------------------------------------------------------- the chain


async def test_appended_chain_verifies(stack: Stack, clock: Any) -> None:
    ids = await append_events(stack.audit, clock)
    assert ids == list(range(1, N_EVENTS + 1))
    result = await stack.audit.verify()
    assert result.ok, result
    assert (result.events, result.head_id, result.first_bad_id) == (N_EVENTS, N_EVENTS, None)
    assert (result.head_id, result.head_hash) == await stack.audit.head()

    rows = await raw_events(stack.db)
    assert [r["id"] for r in rows] == ids
    assert rows[0]["prev_hash"] == GENESIS
    for prev, row in zip(rows, rows[1:]):
        assert row["prev_hash"] == prev["hash"]
    # Each hash is HMAC(audit key, prev_hash + canonical row): recomputable with the key only.
    key = stack.keys.cached_audit_key()
    for row in rows:
        assert chain_hash(key, row["prev_hash"], row) == row["hash"]
    # Small pages walk the same chain.
    assert (await stack.audit.verify(batch=3)).ok


@SQLITE_ONLY
async def test_empty_log_verifies(stack: Stack) -> None:
    result = await stack.audit.verify()
    assert result.ok and result.events == 0 and result.head_id == 0
    assert result.head_hash == GENESIS


@pytest.mark.parametrize("column, value", [("actor", "mallory"), ("outcome", "denied"),
                                            ("at", 1.0)])
async def test_edited_event_is_named(stack: Stack, clock: Any, column: str, value: Any) -> None:
    await append_events(stack.audit, clock)
    assert await sql(stack.db, f"UPDATE audit_events SET {column} = :v WHERE id = 4", v=value) == 1
    result = await stack.audit.verify()
    assert not result.ok
    assert result.first_bad_id == 4, result
    assert "event 4 was changed" in (result.reason or "")
    assert result.events == 3  # events 1..3 still check out


async def test_deleted_event_is_named(stack: Stack, clock: Any) -> None:
    await append_events(stack.audit, clock)
    assert await sql(stack.db, "DELETE FROM audit_events WHERE id = 5") == 1
    result = await stack.audit.verify()
    assert not result.ok
    assert result.first_bad_id == 5, result
    assert "event 5 is missing" in (result.reason or "")


@SQLITE_ONLY
async def test_deleted_and_renumbered_events_are_caught(stack: Stack, clock: Any) -> None:
    """Deleting event 5 and shifting the later ids down leaves no gap in the ids; the
    chain of hashes still breaks at the event that now sits in slot 5."""
    await append_events(stack.audit, clock)
    await sql(stack.db, "DELETE FROM audit_events WHERE id = 5")
    for i in range(6, N_EVENTS + 1):
        await sql(stack.db, "UPDATE audit_events SET id = :new WHERE id = :old", new=i - 1, old=i)
    result = await stack.audit.verify()
    assert not result.ok and result.first_bad_id == 5, result


async def test_swapped_ids_are_named(stack: Stack, clock: Any) -> None:
    await append_events(stack.audit, clock)
    await sql(stack.db, "UPDATE audit_events SET id = 1000 WHERE id = 3")
    await sql(stack.db, "UPDATE audit_events SET id = 3 WHERE id = 6")
    await sql(stack.db, "UPDATE audit_events SET id = 6 WHERE id = 1000")
    result = await stack.audit.verify()
    assert not result.ok
    assert result.first_bad_id == 3, result


async def test_swapped_contents_are_named(stack: Stack, clock: Any) -> None:
    """Reordering by swapping every column but the id (hashes included)."""
    await append_events(stack.audit, clock)
    rows = {r["id"]: r for r in await raw_events(stack.db)}
    cols = [c for c in (*CHAIN_FIELDS, "prev_hash", "hash") if c != "id"]
    assign = ", ".join(f"{c} = :{c}" for c in cols)
    for row_id, source in ((3, 6), (6, 3)):
        await sql(stack.db, f"UPDATE audit_events SET {assign} WHERE id = :row_id",
                  row_id=row_id, **{c: rows[source][c] for c in cols})
    result = await stack.audit.verify()
    assert not result.ok
    assert result.first_bad_id == 3, result


async def test_cut_tail_is_named(stack: Stack, clock: Any) -> None:
    await append_events(stack.audit, clock)
    assert await sql(stack.db, "DELETE FROM audit_events WHERE id > :n", n=N_EVENTS - 2) == 2
    result = await stack.audit.verify()
    assert not result.ok
    assert result.first_bad_id == N_EVENTS - 1, result  # the first event that was cut
    assert result.events == N_EVENTS - 2
    assert "cut from the end" in (result.reason or "")


@SQLITE_ONLY
async def test_cut_tail_with_head_rewound_needs_an_outside_anchor(stack: Stack, clock: Any) -> None:
    """Cutting the tail *and* rewinding audit_head to the new last event leaves a valid,
    shorter chain: only the head logged outside the database (Maintenance) shows it. The
    test pins that limit down, so nobody mistakes the head check for more than it is."""
    await append_events(stack.audit, clock)
    rows = await raw_events(stack.db)
    await sql(stack.db, "DELETE FROM audit_events WHERE id > 8")
    await sql(stack.db, "UPDATE audit_head SET seq = 8, hash = :h", h=rows[7]["hash"])
    result = await stack.audit.verify()
    assert result.ok and result.head_id == 8
    assert result.head_hash != rows[-1]["hash"]  # differs from the anchored head of event 10


def _plain_sha256(_key: bytes, prev_hash: str, row: dict[str, Any]) -> str:
    canonical = json.dumps({k: row[k] for k in CHAIN_FIELDS}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical).hexdigest()


def _hmac_other_key(_key: bytes, prev_hash: str, row: dict[str, Any]) -> str:
    return chain_hash(b"\x42" * 32, prev_hash, row)


async def _recompute_from(db: Database, start: int, rehash: Any, key: bytes) -> None:
    rows = await raw_events(db)
    prev = rows[start - 2]["hash"] if start > 1 else GENESIS
    for row in rows[start - 1:]:
        row["prev_hash"] = prev
        row["hash"] = rehash(key, prev, row)
        await sql(db, "UPDATE audit_events SET prev_hash = :p, hash = :h WHERE id = :id",
                  p=row["prev_hash"], h=row["hash"], id=row["id"])
        prev = row["hash"]
    await sql(db, "UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1", s=rows[-1]["id"], h=prev)


@pytest.mark.parametrize("rehash", [_plain_sha256, _hmac_other_key], ids=["sha256", "hmac-wrong-key"])
async def test_recomputed_chain_without_the_key_is_caught(stack: Stack, clock: Any,
                                                          rehash: Any) -> None:
    """An attacker edits event 4 and rebuilds the rest of the chain (and the head) without
    the audit key: the chain looks linked, but the keyed hash of event 4 does not fit."""
    await append_events(stack.audit, clock)
    await sql(stack.db, "UPDATE audit_events SET outcome = 'denied' WHERE id = 4")
    await _recompute_from(stack.db, 4, rehash, b"")
    result = await stack.audit.verify()
    assert not result.ok
    assert result.first_bad_id == 4, result
    assert "changed" in (result.reason or "")


@SQLITE_ONLY
async def test_recomputed_chain_with_the_key_passes(stack: Stack, clock: Any) -> None:
    """The control for the test above: the same rebuild *with* the audit key verifies, so
    it is the key (wrapped by the master key) that the attacker lacks, nothing else."""
    await append_events(stack.audit, clock)
    await sql(stack.db, "UPDATE audit_events SET outcome = 'denied' WHERE id = 4")
    await _recompute_from(stack.db, 4, chain_hash, stack.keys.cached_audit_key())
    assert (await stack.audit.verify()).ok


@SQLITE_ONLY
async def test_verify_with_another_audit_key_fails_at_the_first_event(stack: Stack,
                                                                      clock: Any) -> None:
    await append_events(stack.audit, clock)
    other = AuditLog(stack.db, lambda: b"\x01" * 32, clock)
    result = await other.verify()
    assert not result.ok and result.first_bad_id == 1


# --------------------------------------------------------------------------- concurrency


async def _gather_appends(audit: AuditLog, n: int, first: int) -> list[int]:
    return await asyncio.gather(*(audit.append(Event(action="test.concurrent", actor=f"u{i}",
                                                     detail=str(i)))
                                  for i in range(first, first + n)))


async def _assert_chain(stack: Stack, n: int) -> None:
    result = await stack.audit.verify()
    assert result.ok, result
    assert result.events == n and result.head_id == n
    rows = await raw_events(stack.db)
    assert [r["id"] for r in rows] == list(range(1, n + 1))
    assert sorted(r["detail"] for r in rows) == sorted(str(i) for i in range(n))


async def test_concurrent_appends_keep_the_chain(stack: Stack) -> None:
    """50 appends at once once the log has its first event (the daemon's service.start)."""
    assert await stack.audit.append(Event(action="test.concurrent", detail="0")) == 1
    ids = await _gather_appends(stack.audit, 49, 1)
    assert sorted(ids) == list(range(2, 51))
    await _assert_chain(stack, 50)


async def test_concurrent_first_appends_keep_the_chain(stack: Stack) -> None:
    """50 appends at once on an empty log (two daemons starting on a fresh shared database).
    Regression: on PostgreSQL they once all locked a head row that did not exist yet and
    collided on event 1 (fixed by seeding audit_head in the migration)."""
    ids = await _gather_appends(stack.audit, 50, 0)
    assert sorted(ids) == list(range(1, 51))
    await _assert_chain(stack, 50)


# --------------------------------------------------------------------------- content HMACs


@SQLITE_ONLY
async def test_content_hmac_is_keyed(stack: Stack, clock: Any) -> None:
    a = stack.audit.content_hmac("the same words")
    assert HEX64.fullmatch(a)
    assert stack.audit.content_hmac("the same words") == a
    assert stack.audit.content_hmac("other words") != a
    assert a != hashlib.sha256(b"the same words").hexdigest()  # keyed, not a plain digest
    key = stack.keys.cached_audit_key()
    assert a == hmac.new(key, b"the same words", hashlib.sha256).hexdigest()
    other = AuditLog(stack.db, new_data_key, clock)
    assert other.content_hmac("the same words") != a
    # Non-ASCII text is hashed as UTF-8.
    assert stack.audit.content_hmac("grüße") == hmac.new(
        key, "grüße".encode(), hashlib.sha256).hexdigest()


async def test_inference_events_hold_hmacs_not_content(stack: Stack, clock: Any) -> None:
    accounts = make_accounts(stack.db, clock, stack.audit)
    await accounts.create_user("alice", "user")
    users = await sql(stack.db, "SELECT id FROM users WHERE name = 'alice'")
    who = Identity(users[0][0], "alice", "user", "api_key")
    history = HistoryService(stack.db, stack.keys, stack.audit, clock)
    prompt, answer = "the launch code is ZEBRA-QUARTZ-7781", "noted: MARMALADE-OBOE-4412"
    await history.record_turn(who, "3f0c8a4e-2d8b-4c55-9a59-8d1e1c0b7a11", True, TurnRecord(
        [{"role": "user", "content": prompt}], answer, "m", 7, 5, "req-1", "127.0.0.1"))

    events = await raw_events(stack.db)
    inference = [e for e in events if e["action"] == "inference"]
    assert len(inference) == 1
    ev = inference[0]
    assert ev["prompt_hmac"] == stack.audit.content_hmac(f"user: {prompt}")
    assert ev["answer_hmac"] == stack.audit.content_hmac(answer)
    assert HEX64.fullmatch(ev["prompt_hmac"]) and HEX64.fullmatch(ev["answer_hmac"])
    assert (ev["actor"], ev["model"], ev["prompt_tokens"], ev["completion_tokens"]) == \
        ("alice", "m", 7, 5)
    everything = json.dumps(events, default=str)
    for secret in ("ZEBRA", "QUARTZ", "7781", "MARMALADE", "OBOE", "4412"):
        assert secret not in everything
    assert (await stack.audit.verify()).ok


# --------------------------------------------------------------------------- the CLI


async def _make_data_dir(data_dir: Path, clock: Any) -> None:
    """What `deepseekd init` leaves behind, without importing a model."""
    data_dir.mkdir(mode=0o700, exist_ok=True)
    async with Database(f"sqlite+aiosqlite:///{data_dir / 'deepseekd.db'}") as db:
        await db.upgrade()
        s = await make_stack(db, data_dir / "keys", clock)
        await append_events(s.audit, clock)


async def _cli(data_dir: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DEEPSEEKD_") and k != "CREDENTIALS_DIRECTORY"}
    env.update(DEEPSEEKD_DATA_DIR=str(data_dir),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "deepseekd", *args, cwd=str(data_dir), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_audit_verify(tmp_path: Path, clock: Any) -> None:
    data_dir = tmp_path / "data"
    await _make_data_dir(data_dir, clock)

    rc, out, err = await _cli(data_dir, "audit", "verify")
    assert rc == 0, err
    body = json.loads(out)
    assert body["ok"] is True and body["events"] == N_EVENTS and body["head_id"] == N_EVENTS
    assert body["first_bad_id"] is None

    async with Database(f"sqlite+aiosqlite:///{data_dir / 'deepseekd.db'}") as db:
        await sql(db, "UPDATE audit_events SET actor = 'mallory' WHERE id = 7")

    rc, out, err = await _cli(data_dir, "audit", "verify")
    assert rc == 1, (out, err)
    body = json.loads(out)
    assert body["ok"] is False and body["first_bad_id"] == 7
    assert "event 7" in err
    assert err.startswith("deepseekd: audit chain broken at event 7"), err


async def test_cli_audit_verify_without_the_key(tmp_path: Path, clock: Any) -> None:
    """No master key: the command refuses (exit 2), it does not report a clean chain."""
    data_dir = tmp_path / "data"
    await _make_data_dir(data_dir, clock)
    for f in (data_dir / "keys").iterdir():
        f.unlink()
    rc, out, err = await _cli(data_dir, "audit", "verify")
    assert rc == 2 and out == ""
    assert "no master key found" in err


# --------------------------------------------------------------------------- query


@SQLITE_ONLY
async def test_query_filters_and_pages(stack: Stack, clock: Any) -> None:
    t0 = clock()
    await append_events(stack.audit, clock)  # event i is at t0 + i
    everything = await stack.audit.query(limit=1000)
    assert [e["id"] for e in everything] == list(range(1, N_EVENTS + 1))
    assert set(everything[0]) == {*CHAIN_FIELDS, "prev_hash", "hash"}
    assert [e["id"] for e in await stack.audit.query(actor="user3")] == [3]
    assert [e["id"] for e in await stack.audit.query(action="test.action0")] == [3, 6, 9]
    assert [e["id"] for e in await stack.audit.query(since=t0 + 4, until=t0 + 7)] == [4, 5, 6]
    assert [e["id"] for e in await stack.audit.query(after_id=7, limit=2)] == [8, 9]
    assert await stack.audit.query(after_id=N_EVENTS) == []


# --------------------------------------------------------------------------- the anchor


@SQLITE_ONLY
async def test_verify_against_an_anchor_kept_elsewhere(stack: Stack, clock: Any) -> None:
    """`audit verify --expect-head ID:HASH`: a chain rewritten with the audit key verifies
    on its own, but not against the head logged before the rewrite."""
    await append_events(stack.audit, clock)
    anchor = await stack.audit.head()
    assert (await stack.audit.verify(expect=anchor)).ok
    assert (await stack.audit.verify(expect=(4, (await raw_events(stack.db))[3]["hash"]))).ok
    # Someone with the audit key rewrites event 4 and re-chains everything after it.
    await sql(stack.db, "UPDATE audit_events SET outcome = 'denied' WHERE id = 4")
    await _recompute_from(stack.db, 4, chain_hash, stack.keys.cached_audit_key())
    assert (await stack.audit.verify()).ok
    result = await stack.audit.verify(expect=anchor)
    assert not result.ok and "rewritten" in (result.reason or "")
    cut = await stack.audit.verify(expect=(N_EVENTS + 5, "0" * 64))
    assert not cut.ok and "cut" in (cut.reason or "")


async def test_the_anchor_is_logged_whatever_the_level(db: Database, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """An admin could set obs.log_level = WARNING at run time and so switch the anchor
    (logged at INFO) off."""
    import logging

    from deepseekd.obs.logs import ANCHOR_LOGGER
    from deepseekd.services.maintenance import log_anchor

    class Svc:
        audit: Any

    stack = await make_stack(db, tmp_path / "keys", lambda: 1_780_000_000.0)
    svc = Svc()
    svc.audit = stack.audit
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.WARNING)
    try:
        await log_anchor(svc)  # type: ignore[arg-type]
        logging.getLogger("deepseekd").info("an ordinary INFO line")  # filtered, as it should
    finally:
        root.setLevel(before)
    assert [r.getMessage() for r in caplog.records] == ["audit head"]
    assert caplog.records[0].name == ANCHOR_LOGGER
