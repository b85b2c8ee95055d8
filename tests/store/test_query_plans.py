"""The statements behind a user's history use indexes: listing (first and a later page),
opening, searching, appending a turn and deleting everything of a user never scan a table
that grows with the work (turns, conversations, users, their keys, the audit log). The
statements are the ones the services really run, caught at the cursor; their plans come from
EXPLAIN QUERY PLAN on SQLite and from EXPLAIN on PostgreSQL (with sequential scans priced
out, so that a tiny test table does not make one look cheaper than an index it has).
bench/store_scale.py measures what this keeps fast at 1,000,000 turns."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from deepseekd.domain.identity import Identity
from deepseekd.security.keyring import Keyring, create_master_key
from deepseekd.services.audit import AuditLog
from deepseekd.services.history import HistoryService, TurnRecord
from deepseekd.services.keys import KeyService
from deepseekd.store.db import Database
from tests.db_fixtures import FakeClock
from tests.support.services import make_accounts

GROWING = ("turns", "conversations", "users", "user_keys", "api_keys", "audit_events")
SQLITE_SCAN = re.compile(r"^SCAN (\w+)")
PG_SCAN = re.compile(r"Seq Scan on (\w+)")


@contextmanager
def statements() -> Iterator[list[tuple[str, Any]]]:
    """Every statement sent to a database meanwhile, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def hook(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        if not many and statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            seen.append((statement, params))

    event.listen(Engine, "before_cursor_execute", hook)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", hook)


def turn(messages: list[dict[str, str]], answer: str) -> TurnRecord:
    return TurnRecord(messages, answer, "fake-model", 11, 4, "req", "127.0.0.1")


async def history_paths(db: Database, tmp_path: Path) -> dict[str, list[tuple[str, Any]]]:
    """The statements of each path the history is used by, on a user with a few
    conversations."""
    clock = FakeClock()
    create_master_key(tmp_path / "keys", 1)
    keys = KeyService(db, Keyring([tmp_path / "keys"]), tmp_path / "keys", clock)
    await keys.check()
    audit = AuditLog(db, keys.cached_audit_key, clock)
    history = HistoryService(db, keys, audit, clock)
    await make_accounts(db, clock, audit).create_user("alice", "user")
    who = Identity(1, "alice", "user", "api_key")
    ids = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(4)]
    hello = [{"role": "user", "content": "hello there"}]
    for cid in ids:
        clock.advance(60)
        await history.record_turn(who, cid, True, turn(hello, "hi"))
    paths: dict[str, list[tuple[str, Any]]] = {}
    more = [*hello, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "more"}]
    with statements() as paths["turn append"]:
        await history.record_turn(who, ids[0], False, turn(more, "sure"))
    with statements() as paths["list"]:
        await history.list_conversations(who, 3)
    with statements() as paths["list, later page"]:
        await history.list_conversations(who, 3, ids[2])
    with statements() as paths["open"]:
        await history.get_conversation(who, ids[0])
    with statements() as paths["search"]:
        await history.search(who, "hello", 2, None)
    with statements() as paths["delete all"]:
        await history.delete_all_conversations(who)
    return paths


def sqlite_plan(path: str, statement: str, params: Any) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement, params)]


async def pg_plan(db: Database, statement: str, params: Any) -> list[str]:
    def explain(s: Any) -> list[str]:
        c = s.connection()
        c.exec_driver_sql("SET LOCAL enable_seqscan = off")
        return [str(r[0]) for r in c.exec_driver_sql("EXPLAIN " + statement, tuple(params))]

    return await db.read("test.explain", explain)


async def test_history_paths_never_scan_a_growing_table(db: Database, tmp_path: Path) -> None:
    paths = await history_paths(db, tmp_path)
    assert all(paths.values()), {k: len(v) for k, v in paths.items()}
    scans = []
    for path, caught in paths.items():
        for statement, params in caught:
            if db.is_sqlite:
                plan = sqlite_plan(make_url(db.url).database or "", statement, params)
                found = [m[1] for m in map(SQLITE_SCAN.match, plan) if m]
            else:
                plan = await pg_plan(db, statement, params)
                found = [m[1] for line in plan for m in PG_SCAN.finditer(line)]
            scans += [(path, table, statement, plan) for table in found if table in GROWING]
    assert not scans, "\n\n".join(f"{p}: scans {t}\n{s}\n{pl}" for p, t, s, pl in scans)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # SQLite's plan shapes
async def test_listing_counts_turns_from_the_index_alone(db: Database, tmp_path: Path) -> None:
    """A page of the list reads no turn rows: each conversation's turns are counted from
    ix_turns_conversation_seq alone, once per listed conversation, not grouped over all."""
    paths = await history_paths(db, tmp_path)
    path = make_url(db.url).database or ""
    for name in ("list", "list, later page", "search"):
        plans = [sqlite_plan(path, s, p) for s, p in paths[name] if "count(*)" in s]
        assert plans, name
        for plan in plans:
            on_turns = [line for line in plan if " turns " in f"{line} "]
            assert on_turns and all("COVERING INDEX" in line for line in on_turns), plan
            assert not any("GROUP BY" in line for line in plan), plan
