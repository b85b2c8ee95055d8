"""The database: an async SQLAlchemy engine with SQLite made safe for a daemon, transactions
named by their caller, and schema checks against the Alembic revisions."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, AsyncIterator, Callable, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

import deepseekd
from deepseekd.store.writer import GroupWriter, run_after_commit

T = TypeVar("T")

MIGRATIONS_DIR = Path(deepseekd.__file__).resolve().parent.parent / "migrations"
MIGRATION_LOCK_ID = 0x64656570  # "deep": the advisory lock migrators queue on


class SchemaError(Exception):
    """The database schema does not match this deepseekd (newer, unknown or not migrated)."""


class StoreUnavailable(Exception):
    """The database cannot take the work now (locked, disk full, I/O error); the transaction
    was rolled back, so nothing is half-written. The API answers 503."""


_UNAVAILABLE = (
    (("locked", "busy"), "the database is locked by another writer for longer than the busy "
                         "timeout; retry shortly"),
    (("full",), "the database's disk is full; nothing was written. An operator must free "
                "space"),
    (("disk i/o", "readonly", "read-only", "unable to open"),
     "the database cannot be written (I/O error); nothing was written"),
)


def _unavailable(exc: OperationalError) -> StoreUnavailable | None:
    text = str(exc.orig if exc.orig is not None else exc).lower()
    for words, message in _UNAVAILABLE:
        if any(w in text for w in words):
            return StoreUnavailable(message)
    return None


@contextlib.asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except OperationalError as exc:
        mapped = _unavailable(exc)
        if mapped is None:
            raise
        raise mapped from exc
    except PoolTimeout:
        raise StoreUnavailable("every database connection stayed busy for longer than the busy "
                               "timeout; retry shortly") from None


def alembic_config(url: str) -> AlembicConfig:
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise SchemaError(f"migrations not found at {MIGRATIONS_DIR}")
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


SQLITE_POOL = 5
"""SQLite connections per pool (the async one, and the reader threads'), all kept open, none
made on demand: aiosqlite runs a thread per connection, and overflow connections opened and
closed under load churned threads, each leaving freed memory in its malloc arena. Resident
memory then crept up for as long as the load lasted (27% in a 10-minute soak; 3% with the
fixed pool). A request past the pool waits for a connection, up to the busy timeout."""

WRITER_CACHE_KIB = 2048
READER_CACHE_KIB = 256
"""SQLite's page cache per connection. In WAL mode a connection drops its whole cache when
another one has committed since its last transaction, so under steady writes a reader's cache
is refilled from scratch on nearly every read: a large one buys nothing and churns memory
(freed pages left scattered through malloc's arenas). The writer's cache survives its own
commits and keeps SQLite's default, 2 MiB."""


class Database:
    """One per process. ``async with Database(url) as db``; then ``db.write()``/``db.read()``."""

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if not self.is_sqlite:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        else:
            kwargs.update(pool_size=SQLITE_POOL, max_overflow=0, pool_timeout=busy_timeout_ms / 1000)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _make_sqlite_safe(self.engine.sync_engine, busy_timeout_ms, READER_CACHE_KIB)
        self._busy_timeout_ms = busy_timeout_ms
        self._group: GroupWriter | None = None
        self._sync_reads: Engine | None = None
        self.insert = sqlite.insert if self.is_sqlite else postgresql.insert
        """The dialect's INSERT, for ON CONFLICT clauses."""
        self._reads = async_sessionmaker(self.engine, expire_on_commit=False)
        # On SQLite a write transaction takes the write lock up front (BEGIN IMMEDIATE), so
        # two writers queue on the busy timeout instead of one failing at its first write.
        self._writes = async_sessionmaker(
            self.engine.execution_options(sqlite_immediate=True), expire_on_commit=False
        )
        # SQLite has one writer at a time. Writers of this process queue here, in order and
        # without delay; left to SQLite's busy handler they would sleep in its back-off (1, 2,
        # 5 … 100 ms), unfairly: under load a writer could retry past the busy timeout while
        # later ones got the lock. Other processes (the CLI) still wait on busy_timeout.
        self._write_turn = asyncio.Lock() if self.is_sqlite else None
        self._busy_timeout_s = busy_timeout_ms / 1000

    async def __aenter__(self) -> "Database":
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._group is not None:
            group, self._group = self._group, None
            await asyncio.to_thread(group.close)
        if self._sync_reads is not None:
            self._sync_reads.dispose()
        await self.engine.dispose()

    async def reconnect(self) -> None:
        """Close every pooled connection (async, writer, reader); the next use opens new ones
        with the connect-time settings applied again."""
        await self.engine.dispose()
        for engine in (self._group.engine if self._group else None, self._sync_reads):
            if engine is not None:
                await asyncio.to_thread(engine.dispose)

    async def run_write(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` — synchronous ORM code — in a write transaction; returns its
        result once committed. Use for the writes every request makes (quota, audit, turns).

        SQLite: in the group-commit writer (see ``store/writer.py``). PostgreSQL: in an async
        transaction of its own (its driver pipelines well and commits in parallel).
        Callables registered with ``writer.after_commit(session, fn)`` run after the commit.
        """
        if not self.is_sqlite:
            async with self.write() as s:
                return await s.run_sync(fn)
        if self._group is None:
            self._group = GroupWriter(self._sync_engine(WRITER_CACHE_KIB))
        async with _translated():
            return await self._group.submit(fn)

    async def run_read(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` — synchronous code — in a read transaction. On SQLite it runs
        in a worker thread on a plain sqlite3 connection: one hop for the whole read instead
        of several per statement. Use for reads on every request (API key lookup)."""
        if not self.is_sqlite:
            async with self.read() as s:
                return await s.run_sync(fn)
        if self._sync_reads is None:
            self._sync_reads = self._sync_engine(READER_CACHE_KIB)

        def read() -> T:
            with Session(self._sync_reads) as s, s.begin():
                return fn(s)

        async with _translated():
            return await asyncio.to_thread(read)

    def _sync_engine(self, cache_kib: int) -> Engine:
        engine = create_engine(make_url(self.url).set(drivername="sqlite"), pool_size=SQLITE_POOL,
                               max_overflow=0, pool_timeout=self._busy_timeout_ms / 1000)
        _make_sqlite_safe(engine, self._busy_timeout_ms, cache_kib)
        return engine

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction: committed when the block ends, rolled back on error."""
        async with _translated(), self._turn(), self._writes() as session:
            async with session.begin():
                yield session
            run_after_commit(session.sync_session)

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        if self._write_turn is None:
            yield
            return
        try:
            async with asyncio.timeout(self._busy_timeout_s):
                await self._write_turn.acquire()
        except TimeoutError:
            raise StoreUnavailable(_UNAVAILABLE[0][1]) from None
        try:
            yield
        finally:
            self._write_turn.release()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with _translated(), self._reads() as session, session.begin():
            yield session

    # -- schema ----------------------------------------------------------------------

    async def upgrade(self) -> tuple[str | None, str]:
        """Migrate to head; returns (revision before, head). Refuses a newer schema."""
        cfg = alembic_config(self.url)
        # One migrator at a time: two daemons starting on one PostgreSQL, or `migrate` beside
        # a starting daemon, would both create the tables.
        async with self.engine.execution_options(sqlite_immediate=True).begin() as conn:
            if not self.is_sqlite:
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
            before = await conn.run_sync(lambda c: _check_known(cfg, c))

            def run(sync_conn: Connection) -> None:
                cfg.attributes["connection"] = sync_conn
                command.upgrade(cfg, "head")

            await conn.run_sync(run)
        return before, ScriptDirectory.from_config(cfg).get_current_head() or ""

    async def current_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision()
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


def _make_sqlite_safe(sync_engine: Engine, busy_timeout_ms: int, cache_kib: int) -> None:
    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (the driver's would be DEFERRED).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cur.execute("PRAGMA synchronous=FULL")  # an acknowledged commit survives power loss
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        cur.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
