"""Store tests run against SQLite and a private PostgreSQL (fixtures in tests/db_fixtures.py)."""

from tests.db_fixtures import FakeClock, clock, db, db_url, postgres  # noqa: F401
