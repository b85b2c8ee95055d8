"""Data keys on record: per-user keys and the audit key, wrapped by the master key; the
start-up check that the master key is the right one; rotation that re-wraps everything."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from deepseekd.security.keyring import Keyring, KeyringError, create_master_key, new_data_key
from deepseekd.store.db import Database
from deepseekd.store.writer import after_commit
from deepseekd.store.schema import KeyCheck, ServiceKey, UserKey

log = logging.getLogger("deepseekd.keys")

AUDIT_KEY = "audit"
TOTP_KEY = "totp"


def _user_aad(user_id: int) -> bytes:
    return b"user-key:%d" % user_id


def _service_aad(name: str) -> bytes:
    return b"service-key:" + name.encode()


class KeyService:
    def __init__(self, db: Database, keyring: Keyring, clock: Callable[[], float]) -> None:
        self._db = db
        self.keyring = keyring
        self._now = clock
        self._user_keys: dict[int, bytes] = {}
        self._service_keys: dict[str, bytes] = {}

    # -- start-up ----------------------------------------------------------------------

    async def check(self) -> None:
        """Refuse to run with a missing or wrong master key; record a new one's check value."""
        async with self._db.write() as s:
            checks = {c.version: c for c in (await s.execute(select(KeyCheck))).scalars()}
            live = [v for v, c in checks.items() if c.retired_at is None]
            if not checks:
                if (await s.execute(select(UserKey.user_id).limit(1))).first() is not None:
                    raise KeyringError("the database holds wrapped keys but no key check: "
                                       "it was not initialised by this key set")
                v = self.keyring.current_version
                s.add(KeyCheck(version=v, check_value=self.keyring.check_value(v),
                               created_at=self._now()))
                checks = {}
                live = []
                newest_ok = True
            else:
                newest_ok = max(self.keyring.versions) in checks
            for v in live:
                if v not in self.keyring.versions:
                    raise KeyringError(f"master key version {v} is missing: restore "
                                       f"master-v{v}.key from your key backup")
                self.keyring.verify_check(v, checks[v].check_value)
            if not newest_ok:
                raise KeyringError(f"master key version {max(self.keyring.versions)} is not "
                                   "known to the database (a key file from another installation?)")
        # Made on first start, so the first audit event and the first admin can use them.
        await self.service_key(AUDIT_KEY)
        await self.service_key(TOTP_KEY)

    # -- data keys ---------------------------------------------------------------------

    async def user_key(self, s: AsyncSession, user_id: int, *, create: bool) -> bytes | None:
        """The user's data key (created on first use if ``create``); None once erased."""
        key = self._user_keys.get(user_id)
        if key is not None:
            return key
        return await s.run_sync(lambda sync: self.user_key_sync(sync, user_id, create=create))

    def user_key_sync(self, s: Session, user_id: int, *, create: bool) -> bytes | None:
        """``user_key`` for synchronous ORM code (``Database.run_write`` jobs).

        A key read inside a write transaction is cached only once that transaction commits:
        it may have been made by an earlier job of the same, still uncommitted, batch, and a
        cached key that was never stored would seal unreadable turns."""
        key = self._user_keys.get(user_id)
        if key is not None:
            return key
        row = s.get(UserKey, user_id)
        if row is None:
            if not create:
                return None
            key = new_data_key()
            version, wrapped = self.keyring.wrap(key, _user_aad(user_id))
            # Two first turns of one user may race (PostgreSQL): whoever loses reads the
            # winner's key.
            inserted = s.execute(
                self._db.insert(UserKey).values(user_id=user_id, kek_version=version,
                                                wrapped=wrapped, created_at=self._now())
                .on_conflict_do_nothing(index_elements=[UserKey.user_id])
            ).rowcount
            if not inserted:
                row = s.execute(select(UserKey).where(UserKey.user_id == user_id)
                                .execution_options(populate_existing=True)).scalar_one()
        if row is not None:
            key = self.keyring.unwrap(row.kek_version, row.wrapped, _user_aad(user_id))
        assert key is not None
        if create:
            after_commit(s, lambda: self._user_keys.__setitem__(user_id, key))
        else:
            self._user_keys[user_id] = key
        return key

    async def destroy_user_key(self, user_id: int) -> bool:
        """Crypto-shred: the data key goes first, in a transaction of its own."""
        self._user_keys.pop(user_id, None)
        async with self._db.write() as s:
            result = await s.execute(delete(UserKey).where(UserKey.user_id == user_id))
        self._user_keys.pop(user_id, None)
        return bool(result.rowcount)

    async def service_key(self, name: str) -> bytes:
        """A key of the service itself (audit HMAC, TOTP sealing), made on first use."""
        key = self._service_keys.get(name)
        if key is not None:
            return key
        async with self._db.write() as s:
            row = await s.get(ServiceKey, name)
            if row is None:
                key = new_data_key()
                version, wrapped = self.keyring.wrap(key, _service_aad(name))
                s.add(ServiceKey(name=name, kek_version=version, wrapped=wrapped,
                                 created_at=self._now()))
            else:
                key = self.keyring.unwrap(row.kek_version, row.wrapped, _service_aad(name))
        self._service_keys[name] = key
        return key

    async def audit_key(self) -> bytes:
        return await self.service_key(AUDIT_KEY)

    def cached_key(self, name: str) -> bytes:
        key = self._service_keys.get(name)
        if key is None:
            raise KeyringError(f"the {name} key is not loaded (KeyService.check not run)")
        return key

    def cached_audit_key(self) -> bytes:
        return self.cached_key(AUDIT_KEY)

    def cached_totp_key(self) -> bytes:
        return self.cached_key(TOTP_KEY)

    # -- rotation ----------------------------------------------------------------------

    async def current_key_age(self) -> float:
        async with self._db.read() as s:
            created = (await s.execute(select(KeyCheck.created_at).where(
                KeyCheck.version == self.keyring.current_version))).scalar_one_or_none()
        return self._now() - (created if created is not None else self._now())

    async def rotate(self, keys_dir: Path) -> tuple[list[int], int]:
        """New master key version; every data key re-wrapped in one transaction; old retired.

        Serving goes on: readers unwrap with whichever version a row names, and a daemon
        picks up the new key file on its next wrap.
        """
        old = self.keyring.versions
        new = max(old) + 1
        create_master_key(keys_dir, new)
        self.keyring.reload()
        if self.keyring.current_version != new:
            raise KeyringError(f"new master key v{new} not picked up from {keys_dir}")
        await self._rewrap(new, first=True)
        # A daemon that wrapped a new user's key just before it saw the new file: catch it.
        await asyncio.sleep(0.5)
        await self._rewrap(new, first=False)
        for v in old:
            self.keyring.retire(v)
        log.info("master key rotated", extra={"retired": old, "current": new})
        return old, new

    async def _rewrap(self, new: int, *, first: bool) -> None:
        now = self._now()
        async with self._db.write() as s:
            for row in (await s.execute(select(UserKey).where(UserKey.kek_version != new))).scalars():
                key = self.keyring.unwrap(row.kek_version, row.wrapped, _user_aad(row.user_id))
                _, row.wrapped = self.keyring.wrap(key, _user_aad(row.user_id))
                row.kek_version = new
            for row in (await s.execute(select(ServiceKey).where(ServiceKey.kek_version != new))).scalars():
                key = self.keyring.unwrap(row.kek_version, row.wrapped, _service_aad(row.name))
                _, row.wrapped = self.keyring.wrap(key, _service_aad(row.name))
                row.kek_version = new
            if first:
                s.add(KeyCheck(version=new, check_value=self.keyring.check_value(new),
                               created_at=now))
                await s.execute(update(KeyCheck).where(KeyCheck.version != new,
                                                       KeyCheck.retired_at.is_(None))
                                .values(retired_at=now))
