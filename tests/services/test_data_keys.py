"""Per-user data keys under concurrency and failure (found while racing two daemons).

A user's first stored turn creates their data key. Two things must hold: concurrent first
turns all succeed with one key, and a key is only ever used once it is committed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from deepseekd.config import AuthSettings, QuotaSettings
from deepseekd.security.keyring import Keyring, create_master_key
from deepseekd.domain.identity import Identity
from tests.support.services import make_accounts
from deepseekd.domain.errors import AuditUnavailable
from deepseekd.services.audit import AuditLog
from deepseekd.store.db import Database
from deepseekd.services.history import HistoryService, TurnRecord
from deepseekd.services.keys import KeyService


def turn(i: int = 0) -> TurnRecord:
    return TurnRecord([{"role": "user", "content": f"question {i}"}], f"answer {i}", "m", 2, 2,
                      f"req-{i}", None)


class Store:
    """The services as the daemon wires them; ``restart()`` is a new process (empty caches)."""

    def __init__(self, db: Database, key_dir: Path) -> None:
        self.db = db
        self.key_dir = key_dir

    async def start(self) -> "Store":
        self.keys = KeyService(self.db, Keyring.for_data_dir(self.key_dir), self.key_dir / "keys", time.time)
        await self.keys.check()
        self.audit = AuditLog(self.db, self.keys.cached_audit_key, time.time)
        self.accounts = make_accounts(self.db, time.time, self.audit,
                                      totp_key=self.keys.cached_totp_key)
        self.history = HistoryService(self.db, self.keys, self.audit, time.time)
        return self

    async def restart(self) -> "Store":
        return await Store(self.db, self.key_dir).start()

    async def new_user(self, name: str = "alice") -> Identity:
        new = await self.accounts.create_user(name, "user")
        who = await self.accounts.authenticate_key(new.api_key)
        assert who is not None
        return who


@pytest.fixture
async def store(db_url: str, tmp_path: Path):
    create_master_key(tmp_path / "keys", 1)
    async with Database(db_url, pool_size=20) as db:
        await db.upgrade()
        yield await Store(db, tmp_path).start()


async def test_concurrent_first_turns_of_a_new_user(store: Store) -> None:
    """All succeed, with one key: on PostgreSQL they really race to create it."""
    who = await store.new_user()
    ids = [str(uuid.uuid4()) for _ in range(20)]
    results = await asyncio.gather(
        *(store.history.record_turn(who, cid, True, turn(i)) for i, cid in enumerate(ids)),
        return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    later = await store.restart()
    for i, cid in enumerate(ids):
        conv = await later.history.get_conversation(who, cid)
        assert conv["turns"][0]["answer"] == f"answer {i}"


async def test_a_rolled_back_first_turn_does_not_leave_an_unstored_key(store: Store) -> None:
    """A data key is used only once stored: a turn saved after a failed first turn is still
    readable after a restart."""
    who = await store.new_user()
    real = store.audit.append_in
    calls = 0

    def fails_once(s, ev):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("audit write failed")
        return real(s, ev)

    store.audit.append_in = fails_once  # type: ignore[method-assign]
    with pytest.raises(AuditUnavailable):
        await store.history.record_turn(who, str(uuid.uuid4()), True, turn(0))
    cid = str(uuid.uuid4())
    await store.history.record_turn(who, cid, True, turn(1))
    assert (await store.history.get_conversation(who, cid))["turns"][0]["answer"] == "answer 1"

    later = await store.restart()
    conv = await later.history.get_conversation(who, cid)
    assert conv["turns"][0].get("answer") == "answer 1", conv["turns"][0]
