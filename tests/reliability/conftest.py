"""The reliability suite: faults, hostile input, load. Every test here is marked
``reliability`` (make test-reliability runs them all); the ones too long for make test are
also marked ``soak``, which make test leaves out."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.process import DaemonProcess, clean_env
from tests.support.process import start_fake_daemon as _start
from tests.support.store_setup import add_users, init_store


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


# --------------------------------------------------------------------------- a daemon process

@dataclass
class FakeDaemonProcess(DaemonProcess):
    """tests/support/fake_daemon.py (the real daemon over the FakeEngine) as a process."""

    keys: dict[str, str]
    data: Path

    def audit_verify(self) -> subprocess.CompletedProcess[str]:
        """The real `deepseekd audit verify` on this daemon's data dir."""
        return subprocess.run([sys.executable, "-m", "deepseekd", "audit", "verify"],
                              env=clean_env(DEEPSEEKD_DATA_DIR=str(self.data)),
                              capture_output=True, text=True, timeout=300)


async def _prepare(data: Path, names: list[str]) -> dict[str, str]:
    db_url = await init_store(data)
    users = await add_users(db_url, data, names, daily_request_limit=10_000_000)
    return {u.name: u.api_key for u in users}


def start_fake_daemon(tmp: Path, users: list[str], **env_extra: str) -> FakeDaemonProcess:
    """A new data dir with ``users`` (API keys, no daily limit to speak of), served by the
    fake daemon; ready when this returns."""
    data = tmp / "data"
    keys = asyncio.run(_prepare(data, users))
    d = _start(data, tmp / "fake-daemon.log", **env_extra)
    return FakeDaemonProcess(d.url, d.proc, d.log_path, keys, data)
