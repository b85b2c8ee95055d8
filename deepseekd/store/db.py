"""The database: ONE write entry point and one read entry point.

Every transaction is a named, synchronous function of a SQLAlchemy ``Session`` (as Synapse's
``runInteraction("name", fn)``): ``await db.write("turn.seal", fn)``. Repository functions
take that session and never commit; the caller's function is the transaction.

* SQLite: writes run in the group-commit writer thread (``store/writer.py``), so every write
  of the process is ordered on one connection; reads run in a small pool of reader threads
  on plain sqlite3 connections, one hop per read.
* PostgreSQL: each transaction is an async transaction of its own (asyncpg pipelines well
  and commits in parallel); the function runs through ``AsyncSession.run_sync``.

The name of every transaction appears in the log when it fails or is slow, and in the
``deepseekd_db_transaction_seconds{name}`` histogram (``observe``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

import deepseekd
from deepseekd.domain.errors import StoreUnavailable
from deepseekd.store.writer import GroupWriter, run_after_commit

T = TypeVar("T")
Transaction = Callable[[Session], T]
Observe = Callable[[str, float], None]

log = logging.getLogger("deepseekd.store")

MIGRATIONS_DIR = Path(deepseekd.__file__).resolve().parent.parent / "migrations"
MIGRATION_LOCK_ID = 0x64656570  # "deep": the advisory lock migrators queue on
SLOW_TRANSACTION_S = 1.0
"""A transaction slower than this (queueing included) is logged with its name."""


class SchemaError(Exception):
    """The database schema does not match this deepseekd (newer, unknown or not migrated)."""


BUSY = "the database is locked by another writer for longer than the busy timeout; retry shortly"
POOL_BUSY = "every database connection stayed busy for longer than the busy timeout; retry shortly"
_UNAVAILABLE = (
    (("locked", "busy"), BUSY),
    (("full",), "the database's disk is full; nothing was written. An operator must free space"),
    (
        ("disk i/o", "readonly", "read-only", "unable to open"),
        "the database cannot be written (I/O error); nothing was written",
    ),
)
UNREACHABLE = "the database cannot be reached (connection lost); nothing was written"


def unavailable(exc: BaseException) -> StoreUnavailable | None:
    """The StoreUnavailable an error of the database stands for, or None for a bug."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(POOL_BUSY)
    if isinstance(exc, OperationalError):
        text = str(exc.orig if exc.orig is not None else exc).lower()
        for words, message in _UNAVAILABLE:
            if any(w in text for w in words):
                return StoreUnavailable(message)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return StoreUnavailable(UNREACHABLE)
    if isinstance(exc, (ConnectionError, OSError)):  # asyncpg: the server went away
        return StoreUnavailable(UNREACHABLE)
    return None


def alembic_config(url: str) -> AlembicConfig:
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise SchemaError(f"migrations not found at {MIGRATIONS_DIR}")
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision(url: str) -> str:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head() or ""


SQLITE_POOL = 5
"""SQLite reader connections (and reader threads), all kept open, none made on demand:
connections opened and closed under load churned threads, each leaving freed memory in its
malloc arena, and resident memory crept up for as long as the load lasted (27% in a
10-minute soak; 3% with a fixed pool). A read past the pool waits for a connection, up to
the busy timeout, then gets StoreUnavailable."""

WRITER_CACHE_KIB = 2048
READER_CACHE_KIB = 256
"""SQLite's page cache per connection. In WAL mode a connection drops its whole cache when
another one has committed since its last transaction, so under steady writes a reader's cache
is refilled from scratch on nearly every read: a large one buys nothing and churns memory.
The writer's cache survives its own commits and keeps SQLite's default, 2 MiB."""


class Database:
    """One per process: ``async with Database(url) as db``, then ``db.write(name, fn)`` and
    ``db.read(name, fn)``; ``close()`` stops the writer and every pool."""

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_ms: int = 5000,
        pool_size: int = 10,
        observe: Observe | None = None,
    ) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.insert = sqlite.insert if self.is_sqlite else postgresql.insert
        """The dialect's INSERT, for ON CONFLICT clauses."""
        self.observe: Observe = observe or (lambda name, seconds: None)
        self._busy_timeout_ms = busy_timeout_ms
        self._busy_timeout_s = busy_timeout_ms / 1000
        self._writer: GroupWriter | None = None
        self._readers: Engine | None = None
        self._read_threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._read_slots = asyncio.Semaphore(SQLITE_POOL)
        self._async: AsyncEngine | None = None
        if not self.is_sqlite:
            self._async = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
            self._sessions = async_sessionmaker(self._async, expire_on_commit=False)
        self._closed = False

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the writer (after the writes it holds), close every connection."""
        if self._closed:
            return
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            await asyncio.to_thread(writer.close)
        if self._read_threads is not None:
            await asyncio.to_thread(self._read_threads.shutdown, True)
        if self._readers is not None:
            self._readers.dispose()
        if self._async is not None:
            await self._async.dispose()

    async def reconnect(self) -> None:
        """Close every pooled connection; the next use opens new ones with the connect-time
        settings applied again."""
        if self._async is not None:
            await self._async.dispose()
        for engine in (self._writer.engine if self._writer else None, self._readers):
            if engine is not None:
                await asyncio.to_thread(engine.dispose)

    # -- transactions ------------------------------------------------------------------

    async def write(self, name: str, fn: Transaction[T]) -> T:
        """Run ``fn(session)`` in a write transaction named ``name``; its result once
        committed. ``writer.after_commit(session, hook)`` hooks run after the commit."""
        async with self._transaction(name):
            if self.is_sqlite:
                return await self._sqlite_writer().submit(fn)
            async with self._pg_session() as s:
                async with s.begin():
                    result = await s.run_sync(fn)
                run_after_commit(s.sync_session)
                return result

    async def read(self, name: str, fn: Transaction[T]) -> T:
        """Run ``fn(session)`` in a read transaction named ``name``."""
        async with self._transaction(name):
            if self.is_sqlite:
                return await self._sqlite_read(fn)
            async with self._pg_session() as s, s.begin():
                return await s.run_sync(fn)

    @contextlib.asynccontextmanager
    async def _transaction(self, name: str) -> AsyncIterator[None]:
        """Time transaction ``name``; turn a database fault into StoreUnavailable."""
        start = time.monotonic()
        try:
            yield
        except BaseException as exc:
            mapped = self._failed(name, exc)
            if mapped is None or mapped is exc:
                raise
            raise mapped from exc
        finally:
            self._timed(name, start)

    def _timed(self, name: str, start: float) -> None:
        elapsed = time.monotonic() - start
        self.observe(name, elapsed)
        if elapsed > SLOW_TRANSACTION_S:
            log.warning(
                "slow transaction", extra={"transaction": name, "seconds": round(elapsed, 3)}
            )

    def _failed(self, name: str, exc: BaseException) -> StoreUnavailable | None:
        """The StoreUnavailable a database fault stands for (logged with the transaction's
        name); None for anything else, which the caller re-raises as it is."""
        if not isinstance(exc, Exception):  # cancelled, interrupted
            return None
        mapped = unavailable(exc)
        if mapped is not None:
            log.error(
                "transaction failed",
                extra={"transaction": name, "error": type(exc).__name__, "reason": mapped.message},
            )
        return mapped

    @contextlib.asynccontextmanager
    async def _pg_session(self) -> AsyncIterator[Any]:
        async with self._sessions() as s:
            yield s

    def _sqlite_writer(self) -> GroupWriter:
        if self._closed:
            raise StoreUnavailable("the database is closed (the daemon is stopping)")
        if self._writer is None:
            self._writer = GroupWriter(
                self._sqlite_engine(WRITER_CACHE_KIB),
                transient=lambda exc: unavailable(exc) is not None,
            )
        return self._writer

    async def _sqlite_read(self, fn: Transaction[T]) -> T:
        if self._closed:
            raise StoreUnavailable("the database is closed (the daemon is stopping)")
        if self._readers is None:
            self._readers = self._sqlite_engine(READER_CACHE_KIB)
            self._read_threads = concurrent.futures.ThreadPoolExecutor(
                SQLITE_POOL, thread_name_prefix="deepseekd-sqlite-read"
            )
        try:
            async with asyncio.timeout(self._busy_timeout_s):
                await self._read_slots.acquire()
        except TimeoutError:
            raise StoreUnavailable(POOL_BUSY) from None
        readers = self._readers

        def run() -> T:
            with Session(readers, expire_on_commit=False) as s, s.begin():
                return fn(s)

        assert self._read_threads is not None
        job = asyncio.get_running_loop().run_in_executor(self._read_threads, run)
        # The slot is free once the thread is done, even when the caller was cancelled.
        job.add_done_callback(lambda _: self._read_slots.release())
        return await asyncio.shield(job)

    def _sqlite_engine(self, cache_kib: int) -> Engine:
        engine = create_engine(
            make_url(self.url).set(drivername="sqlite"),
            pool_size=SQLITE_POOL,
            max_overflow=0,
            pool_timeout=self._busy_timeout_s,
        )
        _make_sqlite_safe(engine, self._busy_timeout_ms, cache_kib)
        return engine

    async def forget_deleted(self, tables: tuple[str, ...]) -> str:
        """Make deleted rows unrecoverable from the database's own files as far as the
        database allows; says what was done. SQLite: rows are zeroed on delete
        (secure_delete), and a TRUNCATE checkpoint moves the WAL into the file and empties
        it, so no old page copy stays in the WAL. PostgreSQL: VACUUM marks the dead rows'
        space free for reuse; the bytes stay on disk until overwritten (VACUUM FULL would
        rewrite the tables, at the cost of an exclusive lock)."""
        if self.is_sqlite:
            path = make_url(self.url).database or ""

            def checkpoint() -> str:
                conn = sqlite3.connect(path, timeout=self._busy_timeout_s, isolation_level=None)
                try:
                    busy, log_pages, done = conn.execute(
                        "PRAGMA wal_checkpoint(TRUNCATE)"
                    ).fetchone()
                finally:
                    conn.close()
                return (
                    "WAL checkpointed and truncated"
                    if not busy
                    else (f"WAL checkpoint incomplete ({done} of {log_pages} pages; readers busy)")
                )

            return await asyncio.to_thread(checkpoint)
        assert self._async is not None
        async with self._async.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.exec_driver_sql(f"VACUUM {', '.join(tables)}")
        return f"VACUUM {', '.join(tables)}"

    @property
    def read_pool_size(self) -> int:
        """Reader connections (SQLite), or connections kept open (PostgreSQL)."""
        if self.is_sqlite:
            return self._readers.pool.size() if self._readers is not None else SQLITE_POOL  # type: ignore[attr-defined]
        assert self._async is not None
        return int(self._async.pool.size())  # type: ignore[attr-defined]

    @property
    def writer(self) -> GroupWriter | None:
        """The SQLite writer, once a write started it (tests read its batch counts)."""
        return self._writer

    # -- schema ------------------------------------------------------------------------

    async def upgrade(self, target: str = "head") -> tuple[str | None, str]:
        """Migrate to ``target`` (head); returns (revision before, revision now). Refuses a
        schema newer than this deepseekd."""
        cfg = alembic_config(self.url)

        def run(conn: Connection) -> str | None:
            before = _check_known(cfg, conn)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, target)
            return before

        # One migrator at a time: two daemons starting on one PostgreSQL, or `migrate` beside
        # a starting daemon, would both create the tables.
        if self.is_sqlite:

            def sqlite_run() -> str | None:
                engine = self._sqlite_engine(READER_CACHE_KIB)
                try:
                    with (
                        engine.connect() as conn,
                        conn.execution_options(sqlite_immediate=True).begin(),
                    ):
                        return run(conn)
                finally:
                    engine.dispose()

            before = await asyncio.to_thread(sqlite_run)
        else:
            assert self._async is not None
            async with self._async.begin() as aconn:
                await aconn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
                before = await aconn.run_sync(run)
        return before, head_revision(self.url) if target == "head" else target

    async def current_revision(self) -> str | None:
        def revision(conn: Connection) -> str | None:
            return MigrationContext.configure(conn).get_current_revision()

        if self.is_sqlite:

            def sqlite_revision() -> str | None:
                engine = self._sqlite_engine(READER_CACHE_KIB)
                try:
                    with engine.connect() as conn:
                        return revision(conn)
                finally:
                    engine.dispose()

            return await asyncio.to_thread(sqlite_revision)
        assert self._async is not None
        async with self._async.connect() as aconn:
            return await aconn.run_sync(revision)

    async def require_head(self) -> None:
        """Refuse a database that is not at this deepseekd's schema (run `migrate` first)."""
        head = head_revision(self.url)
        current = await self.current_revision()
        if current != head:
            raise SchemaError(
                f"the database schema is at {current or 'nothing'}, this "
                f"deepseekd needs {head}: run `deepseekd migrate` (or "
                "`deepseekd init` on a new box)"
            )


def _check_known(cfg: AlembicConfig, conn: Connection) -> str | None:
    current = MigrationContext.configure(conn).get_current_revision()
    script = ScriptDirectory.from_config(cfg)
    if current is None:
        return None
    try:
        known = script.get_revision(current) is not None
    except CommandError:
        known = False
    if not known:
        raise SchemaError(
            f"the database schema is at revision {current}, which this deepseekd does not know "
            f"(its newest is {script.get_current_head()}): the database was written by a newer "
            "deepseekd. Run that version, or restore a backup taken before the upgrade; "
            "downgrades are not supported."
        )
    return current


def _switch_to_wal(cur: Any, busy_timeout_ms: int) -> None:
    """Put the file in WAL mode (it stays so), waiting out another process doing the same.

    Two connections switching a fresh file at once both hold a shared lock and want an
    exclusive one; SQLite answers one of them "database is locked" at once, without the
    busy handler (it would deadlock). Two daemons, or `deepseekd migrate` beside a starting
    daemon, on a new file hit that about one start in ten, so the switch is retried.
    """
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.005
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _make_sqlite_safe(sync_engine: Engine, busy_timeout_ms: int, cache_kib: int) -> None:
    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (the driver's would be DEFERRED).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        _switch_to_wal(cur, busy_timeout_ms)  # readers never block the writer
        cur.execute("PRAGMA synchronous=FULL")  # an acknowledged commit survives power loss
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        # Deleted rows are overwritten with zeros, not left in free pages: an erased user's
        # wrapped data key must not survive in the file (see forget_deleted for the WAL).
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
