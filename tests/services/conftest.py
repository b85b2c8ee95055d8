"""Service tests run against SQLite and a private PostgreSQL (fixtures in
tests/db_fixtures.py)."""

from __future__ import annotations

import pytest

from deepseekd.store.db import Database
from tests.db_fixtures import FakeClock, clock, db, db_url, postgres  # noqa: F401
from tests.support.services import Accounts, make_accounts


@pytest.fixture
def accounts(db: Database, clock: FakeClock) -> Accounts:
    return make_accounts(db, clock)
