"""Data keys on record: per-user keys and the service's own keys (audit HMAC, TOTP seeds),
wrapped by the master key; the start-up check that the master key is the right one; and
master key rotation (services/key_rotation.py, mixed in), which re-wraps everything and is
audited — the one place it happens, for the CLI, the admin API and the automatic rotation
alike."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from deepseekd.security.keyring import (
    Keyring,
    KeyringError,
    new_data_key,
)
from deepseekd.services.audit import AuditLog
from deepseekd.services.key_rotation import (
    Rotation,
    service_key_aad,
    user_key_aad,
)
from deepseekd.store import Tx
from deepseekd.store import keys as repo
from deepseekd.store.db import Database
from deepseekd.store.writer import after_commit

log = logging.getLogger("deepseekd.keys")

AUDIT_KEY = "audit"
TOTP_KEY = "totp"
SSO_KEY = "sso"
"""Seals a single sign-on in progress (the browser's cookie, an admin's ticket), so any
replica sharing the database can finish what another started."""


@dataclass(frozen=True)
class KeyStatus:
    """What the admin console shows of the master key at all times (no key material)."""

    version: int
    created_at: float | None
    """Epoch seconds this version was made (None: not on record yet)."""
    age_days: float
    last_rotated_at: float | None
    """When the last rotation made the current version; None: never rotated."""
    rotation_days: int
    """``[keys] rotation_days``: the daemon rotates at this age; 0 = only by hand."""
    rotation_due_at: float | None
    overdue: bool
    """Older than ``rotation_days`` (an automatic rotation refused or not run yet)."""
    prepared_version: int | None = None
    """Made by ``deepseekd keys new``, waiting for every replica to hold it."""

    def as_json(self) -> dict[str, object]:
        return asdict(self)


class KeyService(Rotation):
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        keys_dir: Path,
        clock: Callable[[], float],
        sync_interval_s: float = 5.0,
    ) -> None:
        self._db = db
        self.keyring = keyring
        self._keys_dir = keys_dir
        self._now = clock
        self.host = socket.gethostname()
        self.keys_where = str(keys_dir.resolve())
        self._live_window_s = 3 * sync_interval_s
        """A replica not heard from for this long (three sync rounds) counts as gone."""
        self._retire_failed: set[int] = set()
        self._user_keys: dict[int, bytes] = {}
        self._service_keys: dict[str, bytes] = {}
        self._rotating = asyncio.Lock()
        self.audit: AuditLog | None = None
        """Set by the container once the audit log (which needs the audit key) exists."""

    # -- start-up ----------------------------------------------------------------------

    async def check(self) -> None:
        """Refuse to run with a missing or wrong master key; record a new one's check value;
        settle what an interrupted rotation left behind. Then load (or, on first start, make)
        the service's own keys."""
        await self._settle_pending()

        def check(s: Tx) -> int:
            checks = repo.key_checks(s)
            live = [v for v, c in checks.items() if c.retired_at is None and not c.prepared]
            if not checks:
                if repo.any_user_key(s):
                    raise KeyringError(
                        "the database holds wrapped keys but no key check: "
                        "it was not initialised by this key set"
                    )
                v = self.keyring.current_version
                repo.add_key_check(s, v, self.keyring.check_value(v), self._now())
                return v
            for v in live:
                if v not in self.keyring.versions:
                    raise KeyringError(
                        f"master key version {v} is missing: restore master-v{v}.key "
                        "from your key backup, or copy it from another host sharing this "
                        "database (README, Scaling out)"
                    )
                self.keyring.verify_check(v, checks[v].check_value)
            if self.keyring.highest_held not in checks:
                raise KeyringError(
                    f"master key version {self.keyring.highest_held} is not known to the "
                    "database (a key file from another installation?)"
                )
            return max(live)

        in_use = await self._db.write("keys.check", check)
        self.keyring.wrap_up_to(in_use)  # a prepared version only unwraps until rotated to
        for name in (AUDIT_KEY, TOTP_KEY, SSO_KEY):
            await self.service_key(name)
        await self._finish_rotation()

    async def _settle_pending(self) -> None:
        """A rotation stopped between staging its key and renaming it into place: if its
        transaction committed (the database holds the new version's check value), finish
        it; if not, the pending key was never used, and is removed."""
        for staged in self.keyring.pending(self._keys_dir):
            checks = await self._db.read("keys.pending", repo.key_checks)
            row = checks.get(staged.version)
            if row is not None and self.keyring.staged_matches(staged, row.check_value):
                self.keyring.commit(staged)
                log.warning(
                    "completed a master key rotation (or `keys new`) that was interrupted "
                    "after its commit",
                    extra={"version": staged.version},
                )
            else:
                self.keyring.discard(staged)
                log.warning(
                    "removed the pending key of a master key rotation that was "
                    "interrupted before its commit; nothing was wrapped with it",
                    extra={"version": staged.version},
                )

    # -- data keys ---------------------------------------------------------------------

    def user_key(self, s: Tx, user_id: int, *, create: bool) -> bytes | None:
        """The user's data key inside a transaction (made on first use if ``create``); None
        when there is none (never written, or erased).

        A key made inside a write transaction is cached only once that transaction commits:
        a cached key that was never stored would seal unreadable turns."""
        key = self._user_keys.get(user_id)
        if key is not None:
            return key
        row = repo.user_key(s, user_id)
        if row is None:
            if not create:
                return None
            key = new_data_key()
            version, wrapped = self.keyring.wrap(key, user_key_aad(user_id))
            if not repo.insert_user_key(s, user_id, version, wrapped, self._now()):
                row = repo.reread_user_key(s, user_id)
        if row is not None:
            key = self.keyring.unwrap(row.kek_version, row.wrapped, user_key_aad(user_id))
        assert key is not None
        if create:
            after_commit(s, lambda: self._user_keys.__setitem__(user_id, key))
        else:
            self._user_keys[user_id] = key
        return key

    def forget_user_key(self, user_id: int) -> None:
        self._user_keys.pop(user_id, None)

    def destroy_user_key(self, s: Tx, user_id: int) -> bool:
        """Crypto-shred inside the caller's transaction: the wrapped data key is deleted
        (and dropped from the cache once that commits)."""
        self._user_keys.pop(user_id, None)
        destroyed = repo.delete_user_key(s, user_id)
        after_commit(s, lambda: self.forget_user_key(user_id))
        return destroyed

    async def service_key(self, name: str) -> bytes:
        """A key of the service itself (audit HMAC, TOTP sealing), made on first use."""
        key = self._service_keys.get(name)
        if key is not None:
            return key

        def load(s: Tx) -> bytes:
            found = self.service_key_in(s, name, create=True)
            assert found is not None
            return found

        key = await self._db.write("keys.service_key", load)
        self._service_keys[name] = key
        return key

    def service_key_in(self, s: Tx, name: str, *, create: bool) -> bytes | None:
        """A service key inside the caller's transaction, made when missing and ``create``
        (None otherwise). Not cached: a fine-tuning dataset's key lives as long as it."""
        row = repo.service_key(s, name)
        if row is None:
            if not create:
                return None
            new = new_data_key()
            version, wrapped = self.keyring.wrap(new, service_key_aad(name))
            repo.add_service_key(s, name, version, wrapped, self._now())
            return new
        return self.keyring.unwrap(row.kek_version, row.wrapped, service_key_aad(name))

    def cached_key(self, name: str) -> bytes:
        key = self._service_keys.get(name)
        if key is None:
            raise KeyringError(f"the {name} key is not loaded (KeyService.check not run)")
        return key

    def cached_audit_key(self) -> bytes:
        return self.cached_key(AUDIT_KEY)

    def cached_totp_key(self) -> bytes:
        return self.cached_key(TOTP_KEY)

    def cached_sso_key(self) -> bytes:
        return self.cached_key(SSO_KEY)

    # -- rotation ----------------------------------------------------------------------

    async def current_key_age(self) -> float:
        created = await self._db.read(
            "keys.age", lambda s: repo.check_created_at(s, self.keyring.current_version)
        )
        return self._now() - (created if created is not None else self._now())

    async def status(self, rotation_days: int) -> KeyStatus:
        """The current master key version, when it was made, its age, the last rotation
        and, with ``rotation_days`` (0: only by hand), when the next one is due."""
        current = self.keyring.current_version
        rows = await self._db.read("keys.status", repo.check_times)
        prepared = [
            v
            for v, c in (await self._db.read("keys.checks", repo.key_checks)).items()
            if c.prepared
        ]
        rows = [r for r in rows if r[0] not in prepared]
        created = next((c for v, c, _ in rows if v == current), None)
        now = self._now()
        age_days = (now - created) / 86400 if created is not None else 0.0
        due = created + rotation_days * 86400 if created is not None and rotation_days else None
        return KeyStatus(
            version=current,
            created_at=created,
            age_days=round(age_days, 2),
            # The current version was made by a rotation unless it is the first on record.
            last_rotated_at=created if any(v < current for v, _, _ in rows) else None,
            rotation_days=rotation_days,
            rotation_due_at=due,
            overdue=due is not None and now >= due,
            prepared_version=max(prepared, default=None),
        )
