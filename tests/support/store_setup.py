"""A data dir's store made ready outside the daemon, for the tests that start one as a
process: the master key, the schema at head, the data keys, and users."""

from __future__ import annotations

import time
from pathlib import Path

from deepseekd.security.keyring import Keyring, create_master_key
from deepseekd.services.accounts import NewUser
from deepseekd.services.audit import AuditLog
from deepseekd.services.keys import KeyService
from deepseekd.store.db import Database
from tests.support.services import make_accounts


async def init_store(data: Path) -> str:
    """A new data dir at ``data`` with its SQLite store at head; returns the store's URL."""
    create_master_key(data / "keys", 1)
    db_url = f"sqlite+aiosqlite:///{(data / 'deepseekd.db').resolve()}"
    async with Database(db_url) as db:
        await db.upgrade()
        await KeyService(db, Keyring.for_data_dir(data), data / "keys", time.time).check()
    return db_url


async def add_users(db_url: str, data: Path, names: list[str], role: str = "user",
                    **limits: int) -> list[NewUser]:
    """Create users through the real AccountService (audited); their one-time credentials."""
    async with Database(db_url) as db:
        keys = KeyService(db, Keyring.for_data_dir(data), data / "keys", time.time)
        await keys.check()
        audit = AuditLog(db, keys.cached_audit_key, time.time)
        accounts = make_accounts(db, time.time, audit, totp_key=keys.cached_totp_key)
        return [await accounts.create_user(name, role, **limits) for name in names]


async def reset_totp(db_url: str, data: Path, name: str) -> str:
    """What another admin's "Reset TOTP" does: a new second factor for ``name``; its URI."""
    async with Database(db_url) as db:
        keys = KeyService(db, Keyring.for_data_dir(data), data / "keys", time.time)
        await keys.check()
        audit = AuditLog(db, keys.cached_audit_key, time.time)
        accounts = make_accounts(db, time.time, audit, totp_key=keys.cached_totp_key)
        return str(await accounts.reset_totp(name))
