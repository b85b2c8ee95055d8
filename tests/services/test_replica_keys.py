"""Master key rotation with several hosts on one database (#19 item 5, the second defect):
before, `keys rotate` on host A re-wrapped everything with a key only A had and deleted the
old one, so host B failed at its next start (or `audit verify`) with "master key version 2
is missing". Now:

* with another live replica, a rotation refuses unless the new version was prepared
  (`keys new`) and every live replica holds it, naming the hosts that do not;
* a prepared version only unwraps: nothing wraps with it until the rotation;
* after the rotation the other replicas wrap with it at their next sync, restart, and read
  everything; the old key file is deleted on each host only once no live replica wraps
  with it;
* a wrong file copied to a host does not count as held; a replica gone for three sync
  intervals does not hold a rotation up.

Each "host" is a set of services with its own data folder (its own keys) on one database.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deepseekd.config import Settings, load_settings
from deepseekd.domain.errors import Conflict
from deepseekd.domain.identity import Identity
from deepseekd.security.keyring import create_master_key
from deepseekd.services.container import Services, open_services
from deepseekd.services.history import TurnRecord


class Clock:
    def __init__(self) -> None:
        self.now = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now


def host(root: Path, name: str, db_url: str) -> Settings:
    return load_settings(path=None, env={
        "DEEPSEEKD_DATA_DIR": str(root / name), "DEEPSEEKD_STORE__URL": db_url})


@contextlib.asynccontextmanager
async def running(settings: Settings, clock: Clock) -> AsyncIterator[Services]:
    async with open_services(settings, migrate=True, clock=clock) as svc:
        yield svc


async def a_turn(svc: Services, answer: str) -> tuple[Identity, str]:
    new = await svc.accounts.create_user(f"u{uuid.uuid4().hex[:8]}", "user")
    who = await svc.auth.authenticate_key(new.api_key)
    assert who is not None
    cid = str(uuid.uuid4())
    await svc.history.record_turn(who, cid, True, TurnRecord(
        [{"role": "user", "content": "q"}], answer, "m", 1, 1, "r", None))
    return who, cid


async def reads(svc: Services, who: Identity, cid: str, answer: str) -> None:
    svc.keys.forget_user_key(who.user_id)  # read through the wrapped key, not the cache
    conv = await svc.history.get_conversation(who, cid)
    assert conv["turns"][0]["answer"] == answer


def key_files(settings: Settings) -> list[str]:
    return sorted(p.name for p in settings.keys_dir.iterdir())


@pytest.fixture
def two_hosts(tmp_path: Path, db_url: str) -> tuple[Settings, Settings]:
    a, b = host(tmp_path, "a", db_url), host(tmp_path, "b", db_url)
    create_master_key(a.keys_dir, 1)
    b.keys_dir.mkdir(parents=True, mode=0o700)
    shutil.copy2(a.keys_dir / "master-v1.key", b.keys_dir / "master-v1.key")
    return a, b


async def test_rotation_waits_for_every_replica_then_nobody_is_left_unable_to_read(
    two_hosts: tuple[Settings, Settings],
) -> None:
    a, b = two_hosts
    clock = Clock()
    async with running(a, clock) as sa, running(b, clock) as sb:
        await sa.keys.sync(1, clock.now)
        await sb.keys.sync(2, clock.now)
        before = await a_turn(sa, "written before the rotation")

        # Unprepared: refused, naming host b; nothing changed.
        with pytest.raises(Conflict) as refused:
            await sa.keys.rotate(None)
        assert refused.value.code == "key_not_prepared"
        assert str(b.keys_dir.resolve()) in refused.value.message
        assert key_files(a) == ["master-v1.key"]

        made = await sa.keys.prepare(None)
        assert made["version"] == 2 and key_files(a) == ["master-v1.key", "master-v2.key"]
        assert made["copy_to"] == [f"{sb.keys.host} (keys in {b.keys_dir.resolve()})"]
        assert sa.keys.keyring.current_version == 1  # prepared: only unwraps
        assert (await sa.keys.status(90)).prepared_version == 2

        # b does not hold v2 yet: refused, naming b.
        await sb.keys.sync(2, clock.now)
        with pytest.raises(Conflict) as lacking:
            await sa.keys.rotate(None)
        assert lacking.value.code == "key_not_on_every_replica"
        assert "master-v2.key" in lacking.value.message
        assert str(b.keys_dir.resolve()) in lacking.value.message

        shutil.copy2(a.keys_dir / "master-v2.key", b.keys_dir / "master-v2.key")
        await sb.keys.sync(2, clock.now)
        await sa.keys.sync(1, clock.now)
        assert [r.key_versions for r in await sa.keys.replicas()] == [[1, 2], [1, 2]]
        assert await sa.keys.rotate(None) == ([1, 2], 2)
        assert sa.keys.keyring.current_version == 2
        # b still wraps with v1 until its sync: a keeps the v1 file meanwhile.
        assert key_files(a) == ["master-v1.key", "master-v2.key"]
        during = await a_turn(sb, "written by b before it synced")

        await sb.keys.sync(2, clock.now)  # takes v2 up, re-wraps what it wrapped with v1
        assert sb.keys.keyring.current_version == 2
        await sa.keys.sync(1, clock.now)  # nobody wraps with v1 now: a deletes its copy
        assert key_files(a) == ["master-v2.key"]
        assert key_files(b) == ["master-v1.key", "master-v2.key"]  # a had not reported v2
        await sb.keys.sync(2, clock.now)
        assert key_files(b) == ["master-v2.key"]
        after = await a_turn(sb, "written by b after it synced")
        for svc in (sa, sb):
            await reads(svc, *before, "written before the rotation")
            await reads(svc, *during, "written by b before it synced")
            await reads(svc, *after, "written by b after it synced")

    # b restarts (it used to fail: "master key version 2 is missing") and verifies.
    async with running(b, clock) as sb:
        await reads(sb, *before, "written before the rotation")
        assert (await sb.audit.verify()).ok
        rotated = [e for e in await sb.audit.query(action="keys.rotate")]
        assert [e["detail"] for e in rotated] == ["v1,2 -> v2"]
        assert [e["detail"] for e in await sb.audit.query(action="keys.prepare")] == [
            "v2 (command line)"]


async def test_wrong_file_and_gone_replicas(two_hosts: tuple[Settings, Settings],
                                            tmp_path: Path) -> None:
    a, b = two_hosts
    clock = Clock()
    async with running(a, clock) as sa, running(b, clock) as sb:
        await sb.keys.sync(2, clock.now)
        out = tmp_path / "handover" / "master-v2.key"
        out.parent.mkdir(mode=0o700)
        made = await sa.keys.prepare(None, out)
        assert made["path"] == str(out) and out.stat().st_mode & 0o777 == 0o600
        assert key_files(a) == ["master-v1.key"]  # --out: not in a's keys folder
        with pytest.raises(Conflict, match="already prepared"):
            await sa.keys.prepare(None)
        with pytest.raises(Conflict, match="this host does not hold"):
            await sa.keys.rotate(None)
        shutil.copy2(out, a.keys_dir / "master-v2.key")

        # A different key under the right name on b: not held, named.
        create_master_key(b.keys_dir, 2)
        await sb.keys.sync(2, clock.now)
        with pytest.raises(Conflict) as lacking:
            await sa.keys.rotate(None)
        assert str(b.keys_dir.resolve()) in lacking.value.message
        assert sb.keys.keyring.current_version == 1

        # b goes quiet for three sync intervals: it no longer holds the rotation up.
        clock.now += 3 * sb.settings.cluster.sync_interval_s + 1
        assert await sa.keys.rotate(None) == ([1, 2], 2)
        live = [r.live for r in await sa.keys.replicas()]
        assert live == [False]


async def test_a_lone_host_rotates_in_one_step_as_before(tmp_path: Path, db_url: str) -> None:
    a = host(tmp_path, "a", db_url)
    create_master_key(a.keys_dir, 1)
    clock = Clock()
    async with running(a, clock) as sa:
        await sa.keys.sync(1, clock.now)  # its own daemon's row does not count as another
        turn = await a_turn(sa, "kept")
        assert await sa.keys.rotate(None) == ([1], 2)
        assert key_files(a) == ["master-v2.key"]
        await reads(sa, *turn, "kept")
