"""Browser fixtures for the web page tests: Debian's Chromium driven by Playwright, and a
daemon over the deterministic FakeEngine (echo mode) for tests that need exact answers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from deepseekd.config import AuthSettings, QuotaSettings
from deepseekd.security.keyring import Keyring, create_master_key
from deepseekd.store.accounts import AccountService
from deepseekd.store.audit import AuditLog
from deepseekd.store.db import Database
from deepseekd.store.keys import KeyService
from tests.e2e.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
SUPPORT = REPO / "tests" / "support"
ARTIFACTS = REPO / "test-artifacts" / "web"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")  # Playwright runs a loop in this thread: close it with the module
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (apt-get install -y chromium)", pytrace=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def shot(page: object, name: str) -> None:
    """Save a screenshot as test-artifacts/web/chat-<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"chat-{name}.png"), full_page=True)  # type: ignore[attr-defined]


def _run(coro: Any) -> Any:
    """asyncio.run in a worker thread: Playwright's sync API keeps a loop in this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class FakeWeb:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path
    db_url: str

    def add_user(self, name: str, role: str = "user", **limits: int) -> str:
        """Create a user in the running daemon's database; returns its password."""
        return _run(_create_user(self.db_url, self.data_dir, name, role, **limits))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def _create_user(db_url: str, data_dir: Path, name: str, role: str, **limits: int) -> str:
    async with Database(db_url) as db:
        keys = KeyService(db, Keyring.for_data_dir(data_dir), time.time)
        await keys.check()
        audit = AuditLog(db, keys.cached_audit_key, time.time)
        accounts = AccountService(db, AuthSettings(), QuotaSettings(), time.time, audit)
        new = await accounts.create_user(name, role, **limits)
        assert new.password
        return new.password


async def _init_db(db_url: str, data_dir: Path) -> None:
    async with Database(db_url) as db:
        await db.upgrade()
        await KeyService(db, Keyring.for_data_dir(data_dir), time.time).check()


def start_fake_web(tmp: Path, **env_extra: str) -> FakeWeb:
    """The real app over the FakeEngine in echo mode, as a process (tests/support/fake_daemon)."""
    data = tmp / "data"
    create_master_key(data / "keys", 1)
    db_url = f"sqlite+aiosqlite:///{(data / 'deepseekd.db').resolve()}"
    _run(_init_db(db_url, data))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEKD_")}
    env.update({
        "DEEPSEEKD_DATA_DIR": str(data),
        "DEEPSEEKD_SERVER__PORT": str(port),
        "DEEPSEEKD_WARMUP__REQUESTS": "1",
        "DEEPSEEKD_WARMUP__MAX_TOKENS": "2",
        "DEEPSEEKD_TEST_FAKE_ECHO": "1",
        **env_extra,
    })
    log_path = tmp / "fake-daemon.log"
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen([sys.executable, str(SUPPORT / "fake_daemon.py")], env=env,
                                cwd=data, stdout=fh, stderr=subprocess.STDOUT)
    web = FakeWeb(f"http://127.0.0.1:{port}", proc, log_path, data, db_url)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"fake daemon exited {proc.returncode}:\n{web.log()[-4000:]}")
        try:
            if httpx.get(web.url + "/readyz", timeout=2).status_code == 200:
                return web
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_fake_web(web)
            raise AssertionError(f"fake daemon not ready:\n{web.log()[-4000:]}")
        time.sleep(0.2)


def stop_fake_web(web: FakeWeb) -> None:
    if web.proc.poll() is None:
        web.proc.send_signal(signal.SIGTERM)
        try:
            web.proc.wait(30)
        except subprocess.TimeoutExpired:
            web.proc.kill()
            web.proc.wait(10)


@pytest.fixture(scope="module")
def fake_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeWeb]:
    web = start_fake_web(tmp_path_factory.mktemp("fake-web"),
                         DEEPSEEKD_TEST_FAKE_TOKEN_DELAY="0.02")
    try:
        yield web
    finally:
        stop_fake_web(web)
