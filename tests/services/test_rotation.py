"""Master key rotation is crash-safe at every step: a SIGKILL between any two steps, or a
database that fails the re-wrap, leaves a daemon that starts and reads every turn; the
keyring stays on the old version until the commit; what an interrupted rotation left
behind is settled at the next start, with a log line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from deepseekd.config import Settings, load_settings
from deepseekd.domain.errors import StoreUnavailable
from deepseekd.domain.identity import Identity
from deepseekd.security.keyring import create_master_key
from deepseekd.services.container import Services, open_services
from deepseekd.services.history import TurnRecord

WORKER = Path(__file__).resolve().parents[1] / "support" / "rotate_worker.py"


def settings_for(data: Path, db_url: str) -> Settings:
    env = {"DEEPSEEKD_DATA_DIR": str(data)}
    if not db_url.startswith("sqlite"):
        env["DEEPSEEKD_STORE__URL"] = db_url
    return load_settings(path=None, env=env)


async def chat_history(svc: Services, n: int) -> list[tuple[Identity, str, str]]:
    """``n`` users with one sealed turn each: (who, conversation id, answer)."""
    out = []
    for i in range(n):
        new = await svc.accounts.create_user(f"user{uuid.uuid4().hex[:6]}{i}", "user")
        who = await svc.auth.authenticate_key(new.api_key)
        assert who is not None
        cid, answer = str(uuid.uuid4()), f"answer number {i}"
        await svc.history.record_turn(who, cid, True, TurnRecord(
            [{"role": "user", "content": f"question {i}"}], answer, "m", 3, 3, f"r{i}", None))
        out.append((who, cid, answer))
    return out


async def everything_reads(settings: Settings, history: list[tuple[Identity, str, str]]) -> None:
    """A fresh start (a new process's services) opens, and every turn reads."""
    async with open_services(settings) as svc:
        for who, cid, answer in history:
            conv = await svc.history.get_conversation(who, cid)
            assert conv["turns"][0]["answer"] == answer, conv
        assert (await svc.audit.verify()).ok


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    create_master_key(d / "keys", 1)
    return d


@pytest.mark.parametrize("step", ["staged", "committed", "renamed", "retiring"])
async def test_sigkill_between_any_two_steps(db_url: str, data: Path, step: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(data, db_url)
    async with open_services(settings, migrate=True) as svc:
        history = await chat_history(svc, 3)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), str(data), step, settings.store.url,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == -9, err.decode()[-2000:]
    await everything_reads(settings, history)
    keys = sorted(p.name for p in (data / "keys").iterdir())
    assert not [k for k in keys if k.endswith(".pending")]
    expect = ["master-v1.key"] if step == "staged" else ["master-v2.key"]
    assert keys == expect
    if step in ("staged", "committed"):
        assert any("interrupted" in r.getMessage() for r in caplog.records)
    # And the next rotation works (no orphan blocks it).
    async with open_services(settings) as svc:
        old, new = await svc.keys.rotate(None)
        assert new == int(expect[0][len("master-v"):-len(".key")]) + 1
        history += await chat_history(svc, 1)
    await everything_reads(settings, history)


async def test_a_failed_rewrap_leaves_the_old_key_in_charge(db_url: str, data: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The new key file used to be written and loaded before the re-wrap transaction; when
    that failed (a busy database, a dropped PostgreSQL connection) the file stayed, new keys
    were wrapped with a version the database had no check for, and the next start
    refused ('a key file from another installation?')."""
    settings = settings_for(data, db_url)
    async with open_services(settings, migrate=True) as svc:
        history = await chat_history(svc, 2)
        real = svc.db.write

        async def busy(name, fn):  # type: ignore[no-untyped-def]
            if name == "keys.rotate":
                raise StoreUnavailable("the database is locked by another writer")
            return await real(name, fn)

        monkeypatch.setattr(svc.db, "write", busy)
        with pytest.raises(StoreUnavailable):
            await svc.keys.rotate(None)
        monkeypatch.setattr(svc.db, "write", real)
        assert svc.keys.keyring.versions == [1]
        assert sorted(p.name for p in (data / "keys").iterdir()) == ["master-v1.key"]
        history += await chat_history(svc, 2)  # new users' keys: wrapped with v1
        old, new = await svc.keys.rotate(None)  # and a retry works
        assert (old, new) == ([1], 2)
    await everything_reads(settings, history)
