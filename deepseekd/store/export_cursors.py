"""How far each SIEM sink has shipped the audit chain, and who may ship it.

A cursor (``export_cursors``) is the last event id a sink acknowledged and that event's hash.
It moves only from the position its writer read (compare-and-set), so a forwarder that lost
its turn to another daemon cannot move it back or skip.

``ForwarderLock``: one forwarder per sink across every daemon on the database. PostgreSQL:
a session advisory lock, held on a connection of its own (autocommit, so no transaction
stays open while a batch is sent); it is released when that connection ends, so a daemon
that dies or loses the database hands the sink over. SQLite: an exclusive ``flock`` on a
file beside the database, released when the process ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import zlib
from typing import NamedTuple

from sqlalchemy import select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from deepseekd.domain.audit import GENESIS
from deepseekd.store.db import Database
from deepseekd.store.dialect import insert, rowcount
from deepseekd.store.schema import ExportCursor

LOCK_CLASS = 0x7369656D
"""The first key of the forwarders' advisory locks ("siem"); the second is the sink's CRC."""
LOCK = text("SELECT pg_try_advisory_lock(:a, :b)")


class Cursor(NamedTuple):
    last_id: int
    last_hash: str


START = Cursor(0, GENESIS)
"""A sink that never acknowledged anything starts before the first event."""


def get(s: Session, sink: str) -> Cursor:
    row = s.execute(select(ExportCursor).where(ExportCursor.sink == sink)).scalar_one_or_none()
    return Cursor(row.last_id, row.last_hash) if row is not None else START


def advance(s: Session, sink: str, old: Cursor, new: Cursor, now: float) -> bool:
    """Move ``sink``'s cursor from ``old`` to ``new``; False (nothing written) when it is no
    longer at ``old``: another forwarder moved it."""
    values = {"last_id": new.last_id, "last_hash": new.last_hash, "updated_at": now}
    if old == START:
        stmt = insert(s, ExportCursor).values(sink=sink, **values).on_conflict_do_nothing()
        if rowcount(s.execute(stmt)) == 1:
            return True
    stmt = (
        update(ExportCursor)
        .where(ExportCursor.sink == sink, ExportCursor.last_id == old.last_id)
        .where(ExportCursor.last_hash == old.last_hash)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return rowcount(s.execute(stmt)) == 1


def all_cursors(s: Session) -> dict[str, Cursor]:
    rows = s.execute(select(ExportCursor)).scalars()
    return {r.sink: Cursor(r.last_id, r.last_hash) for r in rows}


class ForwarderLock:
    """``await lock.acquire()`` (False: another daemon forwards ``sink``), ``await
    lock.held()`` before each batch, ``await lock.release()``."""

    def __init__(self, db: Database, sink: str) -> None:
        self._url = db.url
        self._sqlite = db.is_sqlite
        self._key = {"a": LOCK_CLASS, "b": _signed32(zlib.crc32(sink.encode()))}
        self._lock_path = f"{make_url(db.url).database}.siem-{sink}.lock" if db.is_sqlite else ""
        self._fd: int | None = None
        self._engine: AsyncEngine | None = None
        self._conn: AsyncConnection | None = None

    async def acquire(self) -> bool:
        if self._sqlite:
            return self._flock()
        await self.release()
        self._engine = create_async_engine(self._url, poolclass=NullPool)
        got = False
        try:
            conn = await self._engine.connect()
            self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            got = bool(await self._conn.scalar(LOCK, self._key))
        finally:
            if not got:
                await self.release()
        return got

    async def held(self) -> bool:
        """Still ours: the lock's connection still answers (the server keeps the lock
        exactly as long as that session lives)."""
        if self._sqlite:
            return self._fd is not None
        if self._conn is None:
            return False
        try:
            await self._conn.scalar(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None
        conn, self._conn = self._conn, None
        engine, self._engine = self._engine, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a dead connection's lock is gone anyway
                await conn.close()
        if engine is not None:
            await engine.dispose()

    def _flock(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True


def _signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value
