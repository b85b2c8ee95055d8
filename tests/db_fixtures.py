"""Database fixtures (shared by tests/store and tests/services): each test runs against
SQLite and against a private PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from deepseekd.store.db import Database
from tests.pg import PostgresServer


class FakeClock:
    """A clock the test moves: ``clock()`` is ``clock.now``; ``clock.advance(seconds)``."""

    def __init__(self, now: float = 1_780_000_000.0) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the whole session; missing binaries fail (not skip)."""
    try:
        server = PostgresServer()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, or a new database in the shared cluster."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/t.db"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """The database at head; disposed after the test."""
    async with Database(db_url) as database:
        await database.upgrade()
        yield database
