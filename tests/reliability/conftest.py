"""The reliability suite: faults, hostile input, load. Every test here is marked
``reliability`` (make test-reliability runs them all); the ones too long for make test are
also marked ``soak``, which make test leaves out."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


# --------------------------------------------------------------------------- a daemon process

import asyncio  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import httpx  # noqa: E402

from deepseekd.config import AuthSettings, QuotaSettings  # noqa: E402
from deepseekd.security.keyring import Keyring, SecretBox, create_master_key  # noqa: E402
from deepseekd.store.accounts import AccountService  # noqa: E402
from deepseekd.store.audit import AuditLog  # noqa: E402
from deepseekd.store.db import Database  # noqa: E402
from deepseekd.store.keys import KeyService  # noqa: E402
from tests.support.threaded_app import free_port  # noqa: E402

SUPPORT = Path(__file__).resolve().parents[1] / "support"


@dataclass
class FakeDaemonProcess:
    """tests/support/fake_daemon.py (the real daemon over the FakeEngine) as a process."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    keys: dict[str, str]
    data: Path

    def audit_verify(self) -> subprocess.CompletedProcess[str]:
        """The real `deepseekd audit verify` on this daemon's data dir."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEKD_")}
        env["DEEPSEEKD_DATA_DIR"] = str(self.data)
        return subprocess.run([sys.executable, "-m", "deepseekd", "audit", "verify"], env=env,
                              capture_output=True, text=True, timeout=300)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


async def _make_users(db_url: str, data: Path, names: list[str]) -> dict[str, str]:
    async with Database(db_url) as db:
        await db.upgrade()
        keys = KeyService(db, Keyring.for_data_dir(data), time.time)
        await keys.check()
        audit = AuditLog(db, keys.cached_audit_key, time.time)
        accounts = AccountService(db, AuthSettings(), QuotaSettings(), time.time, audit,
                                  SecretBox(keys.cached_totp_key))
        out = {}
        for name in names:
            new = await accounts.create_user(name, "user", daily_request_limit=10_000_000)
            out[name] = new.api_key
        return out


def start_fake_daemon(tmp: Path, users: list[str], **env_extra: str) -> FakeDaemonProcess:
    data = tmp / "data"
    create_master_key(data / "keys", 1)
    db_url = f"sqlite+aiosqlite:///{(data / 'deepseekd.db').resolve()}"
    keys = asyncio.run(_make_users(db_url, data, users))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEKD_")}
    env.update({"DEEPSEEKD_DATA_DIR": str(data), "DEEPSEEKD_SERVER__PORT": str(port),
                "DEEPSEEKD_WARMUP__REQUESTS": "1", "DEEPSEEKD_WARMUP__MAX_TOKENS": "2",
                **env_extra})
    log_path = tmp / "fake-daemon.log"
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen([sys.executable, str(SUPPORT / "fake_daemon.py")], env=env,
                                cwd=data, stdout=fh, stderr=subprocess.STDOUT)
    d = FakeDaemonProcess(f"http://127.0.0.1:{port}", proc, log_path, keys, data)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"fake daemon exited {proc.returncode}:\n{d.log()[-4000:]}")
        try:
            if httpx.get(d.url + "/readyz", timeout=2).status_code == 200:
                return d
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            d.stop(signal.SIGKILL)
            raise AssertionError(f"fake daemon not ready:\n{d.log()[-4000:]}")
        time.sleep(0.2)
