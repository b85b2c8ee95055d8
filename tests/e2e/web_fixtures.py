"""Browser fixtures for the web page tests: Debian's Chromium driven by Playwright, and a
daemon over the deterministic FakeEngine (echo mode) for tests that need exact answers."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyotp
import pytest

from tests.support.process import DaemonProcess, start_fake_daemon
from tests.support.store_setup import add_users, init_store

if TYPE_CHECKING:
    from playwright.sync_api import Page

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


def watch_problems(page: Page, seen: list[str]) -> Page:
    """Record the page's CSP refusals (console errors) and script errors in `seen`."""
    page.on("console", lambda m: seen.append(m.text) if m.type == "error" and (
        "Content Security Policy" in m.text or "Refused to" in m.text) else None)
    page.on("pageerror", lambda e: seen.append(f"pageerror {e}"))
    return page


class Problems:
    """CSP refusals and script errors of the pages watched."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def watch(self, page: Page) -> Page:
        return watch_problems(page, self.seen)


def totp_now(totp_uri: str) -> str:
    """The current TOTP code of an otpauth:// URI (an admin's second factor)."""
    return pyotp.TOTP(pyotp.parse_uri(totp_uri).secret).now()


def submit_sign_in(page: Page, name: str, password: str, code: str | None = None) -> None:
    """Fill the sign-in form (the chat page's and the console's have the same fields) and
    submit it; `code` goes in the TOTP field when given."""
    page.fill("#login-username", name)
    page.fill("#login-password", password)
    if code is not None:
        page.fill("#login-totp", code)
    page.click("#login-submit")


def sign_in_admin(page: Page, name: str, password: str, code: str | None = None,
                  timeout_ms: float = 10_000) -> None:
    """Sign in to the console at /admin (the page's base_url): an admin gives a TOTP `code`
    and gets #admin-view, an auditor gives none and gets #audit-view."""
    from playwright.sync_api import expect

    page.goto("/admin")
    submit_sign_in(page, name, password, code)
    expect(page.locator("#admin-view" if code else "#audit-view")).to_be_visible(
        timeout=timeout_ms)


def sign_in_chat(page: Page, name: str, password: str, base: str = "") -> None:
    """Sign in on the chat page (at `base`, or the context's base_url) with a password."""
    from playwright.sync_api import expect

    page.goto(base + "/")
    page.wait_for_selector("#login-view:not([hidden])")
    submit_sign_in(page, name, password)
    expect(page.locator("#chat-view")).to_be_visible(timeout=30_000)


@contextmanager
def one_more_send(page: Page, timeout_ms: float = 60_000) -> Iterator[None]:
    """Around what starts a send (Enter, Send, Save, Regenerate): on leaving the block, wait
    until the page counts one more finished send (answer, error or stop) than before it."""
    before = int(page.evaluate("document.body.dataset.sends || '0'"))
    yield
    page.wait_for_function(f"() => Number(document.body.dataset.sends || 0) > {before}",
                           timeout=timeout_ms)


def send(page: Page, text: str, timeout_ms: float = 60_000) -> None:
    """Type `text` in the message box, press Enter, wait until this send finished."""
    with one_more_send(page, timeout_ms):
        page.fill("#composer-input", text)
        page.press("#composer-input", "Enter")


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
