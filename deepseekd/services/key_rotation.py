"""Master key rotation, one host or several on one database: the crash-safe rotation of a
lone host, `keys new` (a prepared version every replica must hold before a rotation uses
it), the replicas' reports, and the retirement of old key files once nobody wraps with
them. Mixed into ``KeyService`` (services/keys.py), which owns the state it uses."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Conflict
from deepseekd.domain.identity import Identity
from deepseekd.security.keyring import (
    Keyring,
    KeyringError,
    Staged,
    new_staged,
    write_staged,
)
from deepseekd.services.audit import AuditLog
from deepseekd.store import Tx
from deepseekd.store import keys as repo
from deepseekd.store.db import Database
from deepseekd.store.schema import KeyCheck

log = logging.getLogger("deepseekd.keys")

CREDENTIALS = (
    "the master key comes from systemd credentials: rotate with the key files on "
    "the host (see README, Operations)"
)


@dataclass(frozen=True)
class ReplicaView:
    """A daemon sharing the database, as it last reported (no key material)."""

    host: str
    keys_dir: str
    pid: int
    seen_s_ago: float
    live: bool
    key_versions: list[int] = field(default_factory=list)
    wraps_with: int = 0

    def where(self) -> str:
        return f"{self.host} (keys in {self.keys_dir})"


def user_key_aad(user_id: int) -> bytes:
    return b"user-key:%d" % user_id


def service_key_aad(name: str) -> bytes:
    return b"service-key:" + name.encode()


class Rotation:
    """The rotation half of ``KeyService``: the attributes below are set by its
    constructor."""

    _db: Database
    keyring: Keyring
    _keys_dir: Path
    _now: Callable[[], float]
    host: str
    keys_where: str
    _live_window_s: float
    _retire_failed: set[int]
    _rotating: asyncio.Lock
    audit: AuditLog | None

    async def _finish_rotation(self) -> None:
        """Re-wrap what an older version still wraps (a daemon that wrapped a new user's key
        during a rotation, or a rotation stopped before this step), then delete the files of
        retired versions nothing uses any more, once no live replica wraps with them."""
        current = self.keyring.current_version
        if len(self.keyring.versions) == 1:
            return
        await self._rewrap_stragglers(current)
        if os.environ.get("CREDENTIALS_DIRECTORY"):
            return  # read-only key files: the host retires them
        now = self._now()

        def retired(s: Tx) -> list[int]:
            behind = [  # this host's own daemon catches up as before a replica existed
                r
                for r in repo.replicas(s)
                if r.seen_at >= now - self._live_window_s
                and r.wraps_with < current
                and (r.host, r.keys_dir) != (self.host, self.keys_where)
            ]
            if behind:
                return []  # another replica may still wrap with an old version
            checks = repo.key_checks(s)
            used = repo.versions_in_use(s)
            return [v for v, c in checks.items() if c.retired_at is not None and v not in used]

        for v in await self._db.read("keys.retired", retired):
            if v in self._retire_failed or v >= current or not self.keyring.holds(v):
                continue
            try:
                if self.keyring.retire(v):
                    log.info("retired master key file deleted", extra={"version": v})
            except OSError as exc:
                self._retire_failed.add(v)  # a read-only mount (a Kubernetes Secret): once
                log.warning(
                    "cannot delete a retired master key file: remove it where the key "
                    "files come from (a Secret, a read-only mount)",
                    extra={"version": v, "error": str(exc)},
                )

    # -- replicas sharing the database ---------------------------------------------------

    def held_versions(self, checks: dict[int, KeyCheck]) -> list[int]:
        """Versions on record whose file this host holds and that match the database."""
        self.keyring.reload()
        held = []
        for v, c in checks.items():
            if c.retired_at is not None or not self.keyring.holds(v):
                continue
            try:
                self.keyring.verify_check(v, c.check_value)
            except KeyringError:
                log.error(
                    "a master key file does not match the database: not counted as held",
                    extra={"version": v},
                )
                continue
            held.append(v)
        return sorted(held)

    async def sync(self, pid: int, started_at: float) -> None:
        """One replica's turn (every ``[cluster] sync_interval_s``): take up a rotation
        another replica made, report the versions held, settle retired files."""
        checks = await self._db.read("keys.checks", repo.key_checks)
        in_use = max(
            (v for v, c in checks.items() if c.retired_at is None and not c.prepared),
            default=self.keyring.current_version,
        )
        held = self.held_versions(checks)
        moved = in_use != self.keyring.current_version
        if moved and in_use in held:
            self.keyring.wrap_up_to(in_use)
            log.info("master key rotated by another replica", extra={"current": in_use})
        elif moved and in_use not in self.keyring.versions:
            log.error(
                "the master key was rotated to a version this host does not hold: copy "
                f"master-v{in_use}.key here",
                extra={"version": in_use},
            )
        now, wraps = self._now(), self.keyring.current_version

        def report(s: Tx) -> None:
            repo.prune_replicas(s, now - 86400)  # gone for a day: forgotten
            repo.report_replica(
                s,
                self.host,
                self.keys_where,
                pid=pid,
                started_at=started_at,
                now=now,
                versions=held,
                wraps_with=wraps,
            )

        await self._db.write("keys.report", report)
        await self._finish_rotation()

    async def leave(self, pid: int) -> None:
        """A replica stopping cleanly takes itself off the list."""
        await self._db.write(
            "keys.leave", lambda s: repo.forget_replica(s, self.host, self.keys_where, pid)
        )

    async def replicas(self) -> list[ReplicaView]:
        now = self._now()

        def read(s: Tx) -> list[ReplicaView]:
            return [
                ReplicaView(
                    host=r.host,
                    keys_dir=r.keys_dir,
                    pid=r.pid,
                    seen_s_ago=round(now - r.seen_at, 1),
                    live=r.seen_at >= now - self._live_window_s,
                    key_versions=[int(v) for v in r.key_versions.split(",") if v],
                    wraps_with=r.wraps_with,
                )
                for r in repo.replicas(s)
            ]

        return await self._db.read("keys.replicas", read)

    def _is_me(self, r: ReplicaView) -> bool:
        return (r.host, r.keys_dir) == (self.host, self.keys_where)

    # -- rotation ----------------------------------------------------------------------

    async def prepare(self, by: Identity | None, out: Path | None = None) -> dict[str, object]:
        """``deepseekd keys new``: a new master key version, recorded in the database as
        prepared. Nothing wraps with it until ``rotate``, which waits for every live replica
        to hold it. Written into this host's keys folder, or to ``out`` (for hosts whose key
        files come from a read-only mount, such as a Kubernetes Secret)."""
        checks = await self._db.read("keys.checks", repo.key_checks)
        pending = [v for v, c in checks.items() if c.prepared]
        if pending:
            raise Conflict(
                f"master key v{pending[0]} is already prepared: copy master-v{pending[0]}.key "
                "to every host, then run `deepseekd keys rotate`",
                code="key_prepared",
            )
        version = max([*checks, self.keyring.highest_held]) + 1
        now = self._now()
        event = (
            Event.by(by, "keys.prepare", detail=f"v{version}")
            if by
            else Event.by_service("keys.prepare", detail=f"v{version} (command line)")
        )
        if out is None:
            staged = self.keyring.stage(self._keys_dir, version)
        else:
            staged = new_staged(version, out)
            try:
                write_staged(staged)  # refuses to overwrite
            except FileExistsError:
                raise Conflict(f"{out} exists: choose another file", code="file_exists") from None

        def record(s: Tx) -> None:
            repo.add_key_check(
                s, version, self.keyring.staged_check_value(staged), now, prepared=True
            )
            if self.audit is not None:
                self.audit.append_in(s, event)

        try:
            await self._db.write("keys.prepare", record)
        except BaseException:
            self.keyring.discard(staged)
            raise
        if out is None:
            self.keyring.commit(staged)  # a key file now; still only unwraps
        lacking = [r.where() for r in await self.replicas() if r.live and not self._is_me(r)]
        return {
            "version": version,
            "path": str(staged.path.with_suffix(".key") if out is None else out),
            "copy_to": lacking,
        }

    async def rotate(
        self, by: Identity | None, *, automatic: bool = False, why: str = ""
    ) -> tuple[list[int], int]:
        """New master key version; every data key re-wrapped; the old version retired; one
        ``keys.rotate`` audit event. ``by`` None: the command line (or, with ``automatic``,
        the daemon itself, ``why`` says what for).

        With other replicas sharing the database, the new version must be one
        ``prepare`` made and every live replica must hold it (a refusal names those that
        do not); the rotation then only re-wraps and marks it in use, and the others take
        it up at their next sync. Alone, the key is made here, crash-safe at every step:
        staged as a pending file nothing wraps with; the re-wrap, the new check value and
        the audit event commit in one transaction; only then is the pending file renamed
        into place. A crash before the commit leaves a pending file the next start removes;
        after it, one the next start renames (see ``check``). Serving goes on throughout:
        readers unwrap with whichever version a row names.
        """
        if os.environ.get("CREDENTIALS_DIRECTORY"):
            await self._refused(by, automatic)
        async with self._rotating:
            old = self.keyring.versions
            prepared = await self._ready_prepared()
            version = prepared or self.keyring.highest_held + 1
            detail = f"v{','.join(map(str, old))} -> v{version}"
            if why:
                detail += f" ({why})"
            event = (
                Event.by_service("keys.rotate", detail=f"automatic: {detail}")
                if automatic
                else Event.by(by, "keys.rotate", detail=detail)
            )
            if prepared:
                await self._rewrap_to(self.keyring.as_staged(prepared), event, prepared=True)
                self.keyring.wrap_up_to(prepared)
            else:
                await self._rotate_alone(event)
            # A process that wrapped a new user's key with the old version just before it
            # saw the new file: give it a moment, then catch it.
            await asyncio.sleep(0.5)
            await self._finish_rotation()
        log.info("master key rotated", extra={"retired": old, "current": version})
        return old, version

    async def _rotate_alone(self, event: Event) -> None:
        try:
            staged = self.keyring.stage(self._keys_dir)
        except KeyringError as exc:
            raise Conflict(str(exc), code="rotation_in_progress") from None
        except OSError as exc:  # a read-only mount (a Kubernetes Secret)
            raise Conflict(
                f"cannot write a new key into {self._keys_dir} ({exc.strerror}): run "
                "`deepseekd keys new --out FILE`, add the file where the keys come from, "
                "then rotate (README, Scaling out)",
                code="keys_read_only",
            ) from None
        try:
            await self._rewrap_to(staged, event)
        except BaseException:
            self.keyring.discard(staged)  # never used: nothing was committed
            raise
        self.keyring.commit(staged)
        self.keyring.wrap_up_to(staged.version)

    async def _ready_prepared(self) -> int | None:
        """The prepared version a rotation uses, once every live replica holds it; None
        when there is none and this host is alone. Refuses, naming the hosts, otherwise."""
        checks = await self._db.read("keys.checks", repo.key_checks)
        prepared = max((v for v, c in checks.items() if c.prepared), default=None)
        others = [r for r in await self.replicas() if r.live and not self._is_me(r)]
        if prepared is None:
            if others:
                raise Conflict(
                    f"{len(others)} other replica(s) share this database "
                    f"({', '.join(r.where() for r in others)}): run `deepseekd keys new`, "
                    "copy the new key file to each, then rotate (README, Scaling out)",
                    code="key_not_prepared",
                )
            return None
        if prepared not in self.held_versions(checks):
            raise Conflict(
                f"this host does not hold the prepared master-v{prepared}.key in "
                f"{self.keys_where}: copy it here first",
                code="key_not_on_every_replica",
            )
        lacking = [r.where() for r in others if prepared not in r.key_versions]
        if lacking:
            raise Conflict(
                f"master key v{prepared} is not on every replica yet: copy "
                f"master-v{prepared}.key to {', '.join(lacking)} (they report within "
                f"{self._live_window_s / 3:g} s), then rotate again",
                code="key_not_on_every_replica",
            )
        return prepared

    async def _refused(self, by: Identity | None, automatic: bool) -> None:
        """With systemd credentials the key files are read-only: refuse, audited."""
        event = (
            Event.by_service("keys.rotate", outcome="denied", detail=CREDENTIALS)
            if automatic
            else Event.by(by, "keys.rotate", outcome="denied", detail=CREDENTIALS)
        )
        if self.audit is not None:
            await self.audit.append(event)
        raise Conflict(CREDENTIALS, code="credentials_keys")

    async def _rewrap_to(self, staged: Staged, event: Event, *, prepared: bool = False) -> None:
        now = self._now()

        def rewrap(s: Tx) -> None:
            for row in repo.user_keys_not_at(s, staged.version):
                aad = user_key_aad(row.user_id)
                key = self.keyring.unwrap(row.kek_version, row.wrapped, aad)
                row.wrapped, row.kek_version = (
                    self.keyring.wrap_staged(staged, key, aad),
                    staged.version,
                )
            for srow in repo.service_keys_not_at(s, staged.version):
                aad = service_key_aad(srow.name)
                key = self.keyring.unwrap(srow.kek_version, srow.wrapped, aad)
                srow.wrapped, srow.kek_version = (
                    self.keyring.wrap_staged(staged, key, aad),
                    staged.version,
                )
            if not prepared:
                repo.add_key_check(s, staged.version, self.keyring.staged_check_value(staged), now)
            elif not repo.activate_check(s, staged.version, now):
                raise Conflict(
                    f"master key v{staged.version} is in use already (another replica "
                    "rotated to it)",
                    code="rotation_in_progress",
                )
            repo.retire_other_checks(s, staged.version, now)
            if self.audit is not None:
                self.audit.append_in(s, event)

        await self._db.write("keys.rotate", rewrap)

    async def _rewrap_stragglers(self, current: int) -> None:
        def rewrap(s: Tx) -> int:
            n = 0
            for row in repo.user_keys_not_at(s, current):
                aad = user_key_aad(row.user_id)
                key = self.keyring.unwrap(row.kek_version, row.wrapped, aad)
                row.kek_version, row.wrapped = self.keyring.wrap(key, aad)
                n += 1
            for srow in repo.service_keys_not_at(s, current):
                aad = service_key_aad(srow.name)
                key = self.keyring.unwrap(srow.kek_version, srow.wrapped, aad)
                srow.kek_version, srow.wrapped = self.keyring.wrap(key, aad)
                n += 1
            return n

        if n := await self._db.write("keys.rewrap", rewrap):
            log.info("keys re-wrapped with the current master key", extra={"keys": n})
