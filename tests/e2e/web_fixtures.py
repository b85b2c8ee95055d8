"""Browser fixtures for the web page tests: Debian's Chromium driven by Playwright, and a
daemon over the deterministic FakeEngine (echo mode) for tests that need exact answers."""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.process import DaemonProcess, start_fake_daemon
from tests.support.store_setup import add_users, init_store

REPO = Path(__file__).resolve().parents[2]
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


def shoot_admin(page: Any, name: str) -> None:
    """The console at desktop width and at 390px (test-artifacts/web/admin-<name>[-390].png);
    the narrow page must not scroll sideways."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"admin-{name}.png"), full_page=True)
    page.set_viewport_size(PHONE)
    try:
        page.wait_for_timeout(150)
        page.screenshot(path=str(ARTIFACTS / f"admin-{name}-390.png"), full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"page is {overflow}px wider than a 390px screen"
    finally:
        page.set_viewport_size(DESKTOP)


def shot(page: object, name: str) -> None:
    """Save a screenshot as test-artifacts/web/chat-<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"chat-{name}.png"), full_page=True)  # type: ignore[attr-defined]


def _run(coro: Any) -> Any:
    """asyncio.run in a worker thread: Playwright's sync API keeps a loop in this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class FakeWeb(DaemonProcess):
    data_dir: Path
    db_url: str

    def add_user(self, name: str, role: str = "user", **limits: int) -> str:
        """Create a user in the running daemon's database; returns its password."""
        [new] = _run(add_users(self.db_url, self.data_dir, [name], role, **limits))
        assert new.password
        return new.password


def start_fake_web(tmp: Path, port: int | None = None, **env_extra: str) -> FakeWeb:
    """The real app over the FakeEngine in echo mode, as a process (tests/support/fake_daemon)."""
    data = tmp / "data"
    db_url = _run(init_store(data))
    # Automatic titles would rename the echo chats a moment after their first answer: off
    # unless a test asks for them (tests/e2e/test_web_chat_edit.py).
    env_extra = {"DEEPSEEKD_WEB__AUTO_TITLE": "false", **env_extra}
    d = start_fake_daemon(data, tmp / "fake-daemon.log", port, DEEPSEEKD_TEST_FAKE_ECHO="1",
                          **env_extra)
    return FakeWeb(d.url, d.proc, d.log_path, data, db_url)


@pytest.fixture(scope="module")
def fake_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeWeb]:
    web = start_fake_web(tmp_path_factory.mktemp("fake-web"),
                         DEEPSEEKD_TEST_FAKE_TOKEN_DELAY="0.02")
    try:
        yield web
    finally:
        web.stop(timeout=30)
