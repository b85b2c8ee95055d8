"""The database locked beyond the busy timeout, and the disk full: 503 with a clear message,
nothing half-written, the daemon stays up and recovers when the fault clears."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from deepseekd.http.state import AUDIT, DATABASE
from deepseekd.store.schema import AuditEvent, Conversation, Turn

from tests.api.helpers import CHAT, CHAT_BODY, error, ok_json

pytestmark = pytest.mark.reliability

MakeDaemon = Any


async def _counts(d: Any) -> tuple[int, int, int]:
    def counts(s: Any) -> tuple[int, int, int]:
        return tuple(s.execute(select(func.count(col))).scalar_one()  # type: ignore[return-value]
                     for col in (Conversation.id, Turn.id, AuditEvent.id))

    return await d.app[DATABASE].read("test", counts)


def _db_file(d: Any) -> Path:
    return Path(d.settings.data_dir) / "deepseekd.db"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_database_locked_beyond_busy_timeout(make_daemon: MakeDaemon, stream: bool) -> None:
    d = await make_daemon(env={"DEEPSEEKD_STORE__BUSY_TIMEOUT_MS": "300"})
    await d.post_json(CHAT, CHAT_BODY)
    before = await _counts(d)
    # Another process's writer holds the lock (in a thread: a blocking call on the loop
    # would stall the daemon's own writes).
    holder = sqlite3.connect(_db_file(d), isolation_level=None, check_same_thread=False)
    try:
        await asyncio.to_thread(holder.execute, "BEGIN IMMEDIATE")
        for _ in range(3):
            resp = await d.client.post(CHAT, json={**CHAT_BODY, "stream": stream},
                                       headers=d.auth)
            err = await error(resp, 503, "database_unavailable")
            assert "locked" in err["message"] and "busy timeout" in err["message"]
            assert resp.headers["Retry-After"]
        assert (await d.client.get("/healthz")).status == 200  # the daemon stays up
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert await _counts(d) == before  # nothing half-written
    body = await d.post_json(CHAT, CHAT_BODY)  # recovered
    assert body["choices"][0]["message"]["content"]
    assert (await d.app[AUDIT].verify()).ok


async def test_disk_full(make_daemon: MakeDaemon) -> None:
    """SQLite's max_page_count stands in for a full disk: every connection the daemon opens
    from now on (its async pool, its writer thread, its readers) may not grow the file."""
    d = await make_daemon()
    db = d.app[DATABASE]
    await d.post_json(CHAT, CHAT_BODY)
    limit = {"pages": 0}

    def cap(dbapi_conn: Any, _record: Any) -> None:
        if limit["pages"]:
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA max_page_count={limit['pages']}")
            cur.close()

    event.listen(Engine, "connect", cap)
    page_count = await asyncio.to_thread(
        lambda: sqlite3.connect(_db_file(d)).execute("PRAGMA page_count").fetchone()[0])
    limit["pages"] = page_count
    await db.reconnect()  # new connections get the cap
    acknowledged: list[str] = []
    full = None
    big = {"messages": [{"role": "user", "content": "x" * 200_000}], "max_tokens": 1}
    for _ in range(40):  # bounded: the free pages run out within a few large turns
        resp = await d.client.post(CHAT, json=big, headers=d.auth)
        if resp.status == 200:
            acknowledged.append(resp.headers["X-Conversation-Id"])
            continue
        full = await error(resp, 503)
        break
    assert full is not None, "the capped database never filled up"
    assert full["code"] == "database_unavailable" and "disk is full" in full["message"], full
    convs_full = await _counts(d)
    assert (await d.client.get("/healthz")).status == 200
    assert (await d.client.get("/v1/models", headers=d.auth)).status == 200  # reads still work
    # The fault clears: the cap is lifted for new connections.
    limit["pages"] = 0
    event.remove(Engine, "connect", cap)
    await db.reconnect()
    await d.post_json(CHAT, CHAT_BODY)
    after = await _counts(d)
    assert after[0] == convs_full[0] + 1 and after[1] == convs_full[1] + 1  # no partial rows
    for cid in acknowledged:  # every acknowledged turn is readable
        got = await ok_json(await d.client.get(f"/v1/conversations/{cid}", headers=d.auth))
        assert len(got["turns"]) == 1
    assert (await d.app[AUDIT].verify()).ok
