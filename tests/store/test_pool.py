"""SQLite's connection pools are fixed: at most SQLITE_POOL connections (and so aiosqlite
threads) per pool, however many requests read at once; a read that finds every connection
busy past the busy timeout gets StoreUnavailable (the API's 503), not a pool error."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from deepseekd.store.db import SQLITE_POOL, Database, StoreUnavailable
from deepseekd.store.schema import RuntimeSetting


async def test_many_concurrent_reads_share_a_fixed_pool(tmp_path: Path) -> None:
    async with Database(f"sqlite+aiosqlite:///{tmp_path}/t.db") as db:
        await db.upgrade()
        before = threading.active_count()
        peak = before

        async def read() -> int:
            nonlocal peak
            async with db.read() as s:
                rows = (await s.execute(select(RuntimeSetting.key))).all()
                peak = max(peak, threading.active_count())
                await asyncio.sleep(0.01)  # hold the connection while others ask
            return len(rows)

        assert await asyncio.gather(*(read() for _ in range(60))) == [0] * 60
        assert db.engine.pool.size() == SQLITE_POOL
        # one aiosqlite thread per connection, and no connection beyond the pool
        assert peak - before <= SQLITE_POOL


async def test_a_read_past_a_busy_pool_is_store_unavailable(tmp_path: Path) -> None:
    async with Database(f"sqlite+aiosqlite:///{tmp_path}/t.db", busy_timeout_ms=300) as db:
        await db.upgrade()
        release = asyncio.Event()
        held = 0

        async def hold() -> None:
            nonlocal held
            async with db.read() as s:
                await s.execute(select(RuntimeSetting.key))
                held += 1
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(SQLITE_POOL)]
        while held < SQLITE_POOL:
            await asyncio.sleep(0.01)
        with pytest.raises(StoreUnavailable, match="busy"):
            async with db.read() as s:
                await s.execute(select(RuntimeSetting.key))
        release.set()
        await asyncio.gather(*holders)
        async with db.read() as s:  # and it recovers once connections come back
            assert (await s.execute(select(RuntimeSetting.key))).all() == []
