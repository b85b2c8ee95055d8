"""SQLite's reader pool is fixed: at most SQLITE_POOL connections (and reader threads),
however many requests read at once; a read that finds every connection busy past the busy
timeout gets StoreUnavailable (the API's 503), not a pool error."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from deepseekd.store.db import SQLITE_POOL, Database, StoreUnavailable
from deepseekd.store.schema import RuntimeSetting


async def test_many_concurrent_reads_share_a_fixed_pool(tmp_path: Path) -> None:
    async with Database(f"sqlite+aiosqlite:///{tmp_path}/t.db") as db:
        await db.upgrade()
        before = threading.active_count()
        peak = before

        def hold(s: Any) -> int:
            nonlocal peak
            rows = s.execute(select(RuntimeSetting.key)).all()
            peak = max(peak, threading.active_count())
            time.sleep(0.01)  # hold the connection while others ask
            return len(rows)

        async def read() -> int:
            return await db.read("test", hold)

        assert await asyncio.gather(*(read() for _ in range(60))) == [0] * 60
        assert db.read_pool_size == SQLITE_POOL
        # one reader thread per connection, and no connection beyond the pool
        assert peak - before <= SQLITE_POOL


async def test_a_read_past_a_busy_pool_is_store_unavailable(tmp_path: Path) -> None:
    async with Database(f"sqlite+aiosqlite:///{tmp_path}/t.db", busy_timeout_ms=300) as db:
        await db.upgrade()
        release = threading.Event()
        held = 0

        def hold(s: Any) -> None:
            nonlocal held
            s.execute(select(RuntimeSetting.key))
            held += 1
            release.wait(30)

        holders = [asyncio.create_task(db.read("test", hold)) for _ in range(SQLITE_POOL)]
        while held < SQLITE_POOL:
            await asyncio.sleep(0.01)
        with pytest.raises(StoreUnavailable, match="busy"):
            await db.read("test", lambda s: s.execute(select(RuntimeSetting.key)))
        release.set()
        await asyncio.gather(*holders)
        # and it recovers once connections come back
        assert await db.read("test", lambda s: s.execute(select(RuntimeSetting.key)).all()) == []
