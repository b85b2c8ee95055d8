"""The admin console and auditor view at /admin, driven in a real Chromium against the real
daemon (real engine, real model). Screenshots of every view go to test-artifacts/web/."""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pyotp
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright

from tests.e2e.conftest import Daemon, cli

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
MODEL = "smollm2-135m-instruct"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
DESKTOP = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}

CONSOLE_PROBLEMS: list[str] = []
"""CSP violations and page errors seen in any page of this module."""


def _watch(page: Page) -> Page:
    def on_console(msg: Any) -> None:
        text = msg.text
        if msg.type == "error" and ("Content Security Policy" in text or "Refused to" in text):
            CONSOLE_PROBLEMS.append(f"{page.url}: {text}")
    page.on("console", on_console)
    page.on("pageerror", lambda exc: CONSOLE_PROBLEMS.append(f"{page.url}: pageerror {exc}"))
    return page


def shoot(page: Page, name: str) -> None:
    """Desktop and 390px-wide screenshots of the current view."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"admin-{name}.png"), full_page=True)
    page.set_viewport_size(NARROW)
    try:
        page.wait_for_timeout(150)
        page.screenshot(path=str(ARTIFACTS / f"admin-{name}-390.png"), full_page=True)
        # Narrow screens must not scroll the whole page sideways (tables scroll in place).
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"page is {overflow}px wider than a 390px screen in view {name}"
    finally:
        page.set_viewport_size(DESKTOP)


def _wait_until(page: Page, fn: str, arg: Any = None, timeout: float = 10) -> None:
    """page.wait_for_function evals its predicate in the page, which the CSP forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(fn, arg):
        assert time.monotonic() < deadline, f"timed out waiting for {fn}"
        time.sleep(0.2)


def _new_user(daemon: Daemon, name: str, role: str) -> dict[str, str]:
    res = cli("user", "add", name, "--role", role, env=daemon.env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _code(creds: dict[str, str], after_step: int | None = None) -> str:
    """A TOTP code; with after_step, one from a later 30 s step (codes are single-use)."""
    totp = pyotp.TOTP(pyotp.parse_uri(creds["totp_uri"]).secret)
    if after_step is not None:
        while int(time.time()) // 30 <= after_step:
            time.sleep(0.5)
    return totp.now()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def people(daemon: Daemon) -> dict[str, dict[str, str]]:
    return {
        "admin": _new_user(daemon, "ui.admin", "admin"),
        "auditor": _new_user(daemon, "ui.auditor", "auditor"),
        "temp": _new_user(daemon, "ui.temp", "user"),
    }


@pytest.fixture(scope="module")
def shared() -> dict[str, Any]:
    """What one test learns and a later one needs (tests in this module run in order)."""
    return {}


def _context(browser: Browser, daemon: Daemon) -> BrowserContext:
    return browser.new_context(base_url=daemon.url, viewport=DESKTOP)


def _admin_login(page: Page, creds: dict[str, str], code: str) -> None:
    page.fill("#login-username", creds["name"])
    page.fill("#login-password", creds["password"])
    page.fill("#login-totp", code)
    page.click("#login-submit")


@pytest.fixture(scope="module")
def admin(browser: Browser, daemon: Daemon, people: dict[str, dict[str, str]]
          ) -> Iterator[Page]:
    """One signed-in admin console for the module (each TOTP step works once per user)."""
    ctx = _context(browser, daemon)
    page = _watch(ctx.new_page())
    page.goto("/admin")
    expect(page.locator("#login-view")).to_be_visible()
    shoot(page, "login")
    # A wrong code is refused with a message and no session.
    _admin_login(page, people["admin"], "000000")
    expect(page.locator("#login-error")).to_contain_text("Sign-in failed")
    expect(page.locator("#admin-view")).to_be_hidden()
    step = int(time.time()) // 30
    _admin_login(page, people["admin"], _code(people["admin"]))
    try:
        expect(page.locator("#admin-view")).to_be_visible(timeout=10_000)
    except AssertionError:  # the code was used up in this step (by another login): next step
        _admin_login(page, people["admin"], _code(people["admin"], after_step=step))
        expect(page.locator("#admin-view")).to_be_visible(timeout=10_000)
    yield page
    ctx.close()


def _csrf(page: Page) -> str:
    res = page.request.get("/admin/api/session")
    assert res.ok, res.text()
    return res.json()["csrf_token"]


# ------------------------------------------------------------------------- headers

def test_admin_page_has_strict_security_headers(daemon: Daemon) -> None:
    res = httpx.get(daemon.url + "/admin", timeout=30)
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/html")
    csp = res.headers["content-security-policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'",
                      "frame-ancestors 'none'", "object-src 'none'", "base-uri 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert res.headers["x-content-type-options"] == "nosniff"
    assert res.headers["referrer-policy"] == "no-referrer"
    html = res.text
    assert '<script type="module" src="/static/admin.js">' in html
    assert '<link rel="stylesheet" href="/static/admin.css">' in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert not re.search(r"\sstyle=|<style|\son[a-z]+=", html), "inline style or handler"
    js = httpx.get(daemon.url + "/static/admin.js", timeout=30)
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert not re.search(r"\.(inner|outer)HTML\b|insertAdjacentHTML|document\.write|\beval\(|"
                         r"new Function", js.text), "HTML parsing or eval in admin.js"


# ------------------------------------------------------------------------- admin

def test_admin_logs_in_with_password_and_totp(admin: Page) -> None:
    expect(admin.locator("#whoami-text")).to_contain_text("ui.admin")
    cookies = {c["name"]: c for c in admin.context.cookies()}
    cookie = cookies["deepseekd_admin"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/admin"
    # The token is not readable from script.
    assert "deepseekd_admin" not in admin.evaluate("document.cookie")


def test_users_table_lists_users(admin: Page) -> None:
    admin.click("#tab-users")
    rows = admin.locator("#users-table tbody tr")
    expect(rows.filter(has_text="ui.auditor")).to_have_count(1)
    row = admin.locator('#users-table tr[data-user="ui.admin"]')
    expect(row).to_contain_text("admin")
    expect(row).to_contain_text("active")
    expect(admin.locator('#users-table tr[data-user="admin"]')).to_have_count(1)  # from init
    shoot(admin, "users")


def test_create_user_shows_one_time_credentials(admin: Page, shared: dict[str, Any]) -> None:
    admin.fill("#new-name", "ui.nurse")
    admin.select_option("#new-role", "user")
    admin.click("#create-submit")
    panel = admin.locator("#secrets")
    expect(panel).to_be_visible()
    password = admin.locator("#secret-password").inner_text().strip()
    api_key = admin.locator("#secret-api-key").inner_text().strip()
    assert len(password) >= 12 and api_key
    expect(admin.locator("#secrets-qr-wrap")).to_be_hidden()  # no TOTP for chat users
    shared["nurse"] = {"name": "ui.nurse", "password": password, "api_key": api_key}
    shoot(admin, "credentials")
    admin.click("#secrets-dismiss")
    expect(panel).to_be_hidden()
    assert admin.locator("#secret-password").count() == 0  # gone from the DOM too
    expect(admin.locator('#users-table tr[data-user="ui.nurse"]')).to_contain_text("user")
    # A duplicate is refused with the server's message next to the name field.
    admin.fill("#new-name", "ui.nurse")
    admin.click("#create-submit")
    expect(admin.locator("#new-name-error")).to_contain_text("already exists")


def test_create_admin_shows_totp_qr_code(admin: Page) -> None:
    admin.fill("#new-name", "ui.admin2")
    admin.select_option("#new-role", "admin")
    admin.click("#create-submit")
    expect(admin.locator("#secrets-qr-wrap")).to_be_visible()
    img = admin.locator("#secrets-qr")
    assert img.get_attribute("src").startswith("data:image/svg+xml;base64,")
    _wait_until(admin, "() => { const i = document.getElementById('secrets-qr'); "
                       "return i.complete && i.naturalWidth > 0; }")  # decoded under the CSP
    uri = admin.locator("#secret-totp-uri").inner_text()
    assert uri.startswith("otpauth://totp/") and "secret=" in uri
    shoot(admin, "credentials-admin")
    admin.click("#secrets-dismiss")
    row = admin.locator('#users-table tr[data-user="ui.admin2"]')
    expect(row).to_contain_text("yes")  # TOTP enrolled


def test_new_user_logs_in_on_the_chat_page(browser: Browser, daemon: Daemon,
                                           shared: dict[str, Any]) -> None:
    nurse = shared["nurse"]
    ctx = _context(browser, daemon)
    try:
        page = _watch(ctx.new_page())
        page.goto("/")
        page.fill("#login-username", nurse["name"])
        page.fill("#login-password", nurse["password"])
        page.click("#login-submit")
        expect(page.locator("#chat-view")).to_be_visible(timeout=15_000)
        who = page.request.get("/auth/session")
        assert who.ok and who.json()["role"] == "user" and who.json()["user"] == "ui.nurse"
    finally:
        ctx.close()


def _manage(admin: Page, name: str) -> None:
    admin.click("#tab-users")
    admin.locator(f'#users-table tr[data-user="{name}"] button').click()
    expect(admin.locator("#user-detail")).to_be_visible()
    expect(admin.locator("#user-detail-title")).to_have_text(f"User {name}")


def test_admin_sets_a_daily_limit(admin: Page) -> None:
    _manage(admin, "ui.nurse")
    admin.fill("#limit-input", "7")
    admin.click("#limit-form button[type=submit]")
    expect(admin.locator("#user-detail-msg")).to_contain_text("set to 7")
    expect(admin.locator('#users-table tr[data-user="ui.nurse"] td').nth(3)).to_have_text("7")
    shoot(admin, "user-detail")


def test_admin_creates_and_revokes_a_key(admin: Page, daemon: Daemon) -> None:
    _manage(admin, "ui.nurse")
    admin.fill("#key-label", "ui test key")
    admin.click("#key-form button[type=submit]")
    expect(admin.locator("#secrets")).to_be_visible()
    key = admin.locator("#secret-api-key").inner_text().strip()
    models = httpx.get(daemon.url + "/v1/models", timeout=30,
                       headers={"Authorization": f"Bearer {key}"})
    assert models.status_code == 200
    admin.click("#secrets-dismiss")
    row = admin.locator("#keys-table tbody tr", has_text="ui test key")
    expect(row).to_have_count(1)
    row.get_by_role("button", name=re.compile("Revoke")).click()
    dialog = admin.locator("#confirm")
    expect(dialog).to_be_visible()
    admin.click("#confirm-ok")
    expect(row).not_to_contain_text("active")
    expect(row.get_by_role("button")).to_have_count(0)
    models = httpx.get(daemon.url + "/v1/models", timeout=30,
                       headers={"Authorization": f"Bearer {key}"})
    assert models.status_code == 401


def test_erase_asks_first_and_names_the_user(admin: Page) -> None:
    _manage(admin, "ui.temp")
    admin.click("#user-erase")
    text = admin.locator("#confirm-text")
    expect(text).to_contain_text("ui.temp")
    expect(text).to_contain_text("cannot be undone")
    shoot(admin, "erase-confirm")
    admin.click("#confirm-cancel")  # cancelling changes nothing
    expect(admin.locator("#confirm")).to_be_hidden()
    expect(admin.locator('#users-table tr[data-user="ui.temp"]')).to_contain_text("active")
    admin.click("#user-erase")
    admin.click("#confirm-ok")
    expect(admin.locator("#user-detail-msg")).to_contain_text("erased")
    expect(admin.locator('#users-table tr[data-user="ui.temp"]')).to_contain_text("disabled")


def test_reset_totp_shows_a_new_qr_once(admin: Page) -> None:
    _manage(admin, "ui.admin2")
    admin.click("#user-totp")
    admin.click("#confirm-ok")
    expect(admin.locator("#secrets")).to_be_visible()
    assert admin.locator("#secret-totp-uri").inner_text().startswith("otpauth://totp/")
    expect(admin.locator("#secrets-qr-wrap")).to_be_visible()
    admin.click("#secrets-dismiss")
    admin.click("#user-close")


def test_model_and_engine_view(admin: Page) -> None:
    admin.click("#tab-engine")
    expect(admin.locator("#panel-engine")).to_be_visible()
    expect(admin.locator("#eng-model")).to_have_text(MODEL, timeout=15_000)
    expect(admin.locator("#eng-phase")).to_have_text("ready")
    sha = admin.locator("#eng-sha")
    assert re.fullmatch(r"[0-9a-f]{64}", sha.get_attribute("title") or "")
    assert (sha.get_attribute("title") or "").startswith(sha.inner_text().rstrip("…"))
    expect(admin.locator("#eng-kv-text")).to_contain_text("%")
    expect(admin.locator("#eng-gpus li").first).to_be_visible()
    expect(admin.locator("#eng-queue")).to_contain_text("running")
    # Polled: the "last update" stamp changes within a poll or two.
    first = admin.locator("#eng-updated").inner_text()
    _wait_until(admin, "(t) => document.getElementById('eng-updated').textContent !== t",
                first, timeout=15)
    shoot(admin, "engine")


def test_tabs_work_from_the_keyboard(admin: Page) -> None:
    admin.click("#tab-users")
    admin.focus("#tab-users")
    admin.keyboard.press("ArrowRight")
    expect(admin.locator("#tab-engine")).to_be_focused()
    expect(admin.locator("#tab-engine")).to_have_attribute("aria-selected", "true")
    expect(admin.locator("#panel-engine")).to_be_visible()
    admin.keyboard.press("End")
    expect(admin.locator("#panel-settings")).to_be_visible()
    admin.keyboard.press("Home")
    expect(admin.locator("#panel-users")).to_be_visible()


def test_master_key_rotation_then_chat_still_works(admin: Page, daemon: Daemon,
                                                   shared: dict[str, Any]) -> None:
    admin.click("#tab-keys")
    admin.click("#rotate")
    expect(admin.locator("#confirm")).to_be_visible()
    admin.click("#confirm-ok")
    result = admin.locator("#rotate-result")
    expect(result).to_contain_text("Current version: v")
    expect(result).to_contain_text("Retired:")
    shoot(admin, "keys")
    chat = httpx.post(daemon.url + "/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {shared['nurse']['api_key']}"},
                      json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert chat.status_code == 200, chat.text


@contextlib.contextmanager
def _daily_requests_setting(admin: Page, new: str) -> Iterator[tuple[Locator, Locator, str]]:
    """The Settings tab's quota.daily_requests form and its input; yields (form, field, the
    value to save: ``new``, or one more if that is the current one). Restored afterwards."""
    admin.click("#tab-settings")
    form = admin.locator('form[data-key="quota.daily_requests"]')
    field = form.locator("input")
    expect(field).to_be_visible()
    original = field.input_value()
    try:
        yield form, field, new if original != new else str(int(new) + 1)
    finally:
        res = admin.request.patch("/admin/api/settings", data={"quota.daily_requests": int(original)},
                                  headers={"X-CSRF-Token": _csrf(admin)})
        assert res.ok, res.text()


def test_settings_change_persists_after_reload(admin: Page) -> None:
    with _daily_requests_setting(admin, "4321") as (form, field, new):
        field.fill(new)
        form.locator("button").click()
        expect(form).to_contain_text("Saved.")
        # Out of range: the server's 400 message appears next to the field.
        field.fill("-5")
        form.locator("button").click()
        expect(form.locator(".field-error")).to_be_visible()
        assert form.locator(".field-error").inner_text().strip()
        shoot(admin, "settings")
        admin.reload()
        expect(admin.locator("#admin-view")).to_be_visible()  # the session resumed
        admin.click("#tab-settings")
        expect(admin.locator('form[data-key="quota.daily_requests"] input')).to_have_value(new)


def test_a_settings_load_in_flight_does_not_undo_a_save(admin: Page) -> None:
    """Opening the tab reloads the settings. If that load is slow and the admin saves before
    it returns, its answer (read before the save) must not redraw the form: the field would
    show the old value and the "Saved." would vanish (seen on a busy machine)."""
    held: list[Any] = []

    def hold_loads(route: Any) -> None:
        if route.request.method == "GET":
            held.append(route)
        else:
            route.continue_()

    with _daily_requests_setting(admin, "4323") as (form, field, new):
        admin.route("**/admin/api/settings", hold_loads)
        try:
            admin.click("#tab-users")
            admin.click("#tab-settings")  # a reload of the settings, held back here
            deadline = time.monotonic() + 10
            while not held and time.monotonic() < deadline:
                admin.wait_for_timeout(50)
            assert held, "opening the tab did not reload the settings"
            field.fill(new)
            form.locator("button").click()
            expect(form).to_contain_text("Saved.")
            with admin.expect_response(lambda r: r.request.method == "GET"
                                       and r.url.endswith("/admin/api/settings")):
                for route in held:
                    route.continue_()
            admin.wait_for_timeout(500)  # room for the page to (wrongly) redraw from that answer
            expect(form).to_contain_text("Saved.")
            expect(field).to_have_value(new)
        finally:
            admin.unroute("**/admin/api/settings")


def test_csrf_is_required_for_cookie_posts(admin: Page) -> None:
    res = admin.request.post("/admin/api/users", data={"name": "ui.csrf", "role": "user"})
    assert res.status == 403
    assert res.json()["error"]["code"] == "csrf_failed"
    res = admin.request.post("/admin/api/users", data={"name": "ui.csrf", "role": "user"},
                             headers={"X-CSRF-Token": "0" * 43})
    assert res.status == 403
    users = admin.request.get("/admin/api/users").json()["users"]
    assert "ui.csrf" not in [u["name"] for u in users]


# ------------------------------------------------------------------------- account recovery

def _chat_sign_in(page: Page, name: str, password: str) -> None:
    """Fill in and send the chat page's sign-in form (the page shows it); return once the
    page has handled the answer (a refusal shows the same words each time)."""
    expect(page.locator("#login-view")).to_be_visible()
    page.fill("#login-username", name)
    page.fill("#login-password", password)
    with page.expect_response(lambda r: r.url.endswith("/auth/login")):
        page.click("#login-submit")
    expect(page.locator("#login-submit")).to_be_enabled()


def _state_cell(admin: Page, name: str) -> Locator:
    return admin.locator(f'#users-table tr[data-user="{name}"] td').nth(1)


def test_reset_password_then_the_user_chooses_a_new_one(admin: Page, browser: Browser,
                                                         daemon: Daemon) -> None:
    clerk = _new_user(daemon, "ui.clerk", "user")
    ctx = _context(browser, daemon)
    try:
        page = _watch(ctx.new_page())
        page.goto("/")
        _chat_sign_in(page, "ui.clerk", clerk["password"])
        expect(page.locator("#chat-view")).to_be_visible(timeout=15_000)

        # The admin resets the password: asked first, then shown a one-time password once.
        _manage(admin, "ui.clerk")
        admin.click("#user-reset-password")
        expect(admin.locator("#confirm-text")).to_contain_text("ui.clerk")
        admin.click("#confirm-ok")
        expect(admin.locator("#secrets")).to_be_visible()
        one_time = admin.locator("#secret-password").inner_text().strip()
        assert len(one_time) >= 12 and one_time != clerk["password"]
        expect(admin.locator("#secrets-note")).to_contain_text(
            "must choose a new password at the next sign-in")
        expect(admin.locator("#user-detail-msg")).to_contain_text("was reset")
        expect(_state_cell(admin, "ui.clerk")).to_have_text("new password pending")
        shoot(admin, "reset-password")
        admin.click("#secrets-dismiss")
        assert admin.locator("#secret-password").count() == 0  # gone from the DOM
        expect(admin.locator("#secrets-note")).to_be_hidden()

        # The clerk's session ended: the next send brings the sign-in form; the old password
        # is refused; the one-time password leads to "Choose a new password", not the chat.
        page.fill("#composer-input", "Is the pharmacy open?")
        page.press("#composer-input", "Enter")
        expect(page.locator("#login-notice")).to_contain_text("Your session ended")
        _chat_sign_in(page, "ui.clerk", clerk["password"])
        expect(page.locator("#login-error")).to_contain_text("Wrong username or password")
        _chat_sign_in(page, "ui.clerk", one_time)
        expect(page.locator("#password-view")).to_be_visible(timeout=15_000)
        expect(page.locator("#chat-view")).to_be_hidden()
        expect(page.locator("#password-title")).to_have_text("Choose a new password")
        expect(page.locator("#password-notice")).to_contain_text("set by an administrator")
        expect(page.locator("#password-cancel")).to_be_hidden()  # no way around it
        expect(page.locator("#change-password")).to_be_hidden()
        assert page.request.get("/v1/conversations").status == 403  # nothing else works

        new_password = "night shift handover 4"
        page.fill("#password-current", one_time)
        page.fill("#password-new", new_password)
        page.fill("#password-repeat", "night shift handover 5")
        page.click("#password-submit")
        expect(page.locator("#password-repeat-error")).to_contain_text("do not match")
        page.fill("#password-new", one_time)
        page.fill("#password-repeat", one_time)
        page.click("#password-submit")
        expect(page.locator("#password-new-error")).to_contain_text("new_password")
        page.screenshot(path=str(ARTIFACTS / "chat-password-required-errors.png"), full_page=True)
        page.fill("#password-new", new_password)
        page.fill("#password-repeat", new_password)
        page.click("#password-submit")

        # Into the chat, with the question that found the session ended still in the box.
        expect(page.locator("#chat-view")).to_be_visible(timeout=15_000)
        expect(page.locator("#composer-input")).to_have_value("Is the pharmacy open?")
        page.fill("#composer-input", "Say OK.")
        page.press("#composer-input", "Enter")
        expect(page.locator(".msg-assistant .answer").last).not_to_be_empty(timeout=240_000)
        expect(page.locator("#stop")).to_be_hidden(timeout=240_000)
        expect(page.locator("#chat-error")).to_be_hidden()
        assert page.request.get("/auth/session").json()["password_change_required"] is False
        admin.click("#tab-users")  # the list is read again: the reset is no longer pending
        expect(_state_cell(admin, "ui.clerk")).to_have_text("active")

        # Reset again: a reload in the middle of the form asks again (from /auth/session).
        res = admin.request.post("/admin/api/users/ui.clerk/reset-password",
                                 headers={"X-CSRF-Token": _csrf(admin)})
        assert res.ok, res.text()
        page.reload()
        _chat_sign_in(page, "ui.clerk", res.json()["password"])
        expect(page.locator("#password-view")).to_be_visible(timeout=15_000)
        page.reload()
        expect(page.locator("#password-view")).to_be_visible(timeout=15_000)
        expect(page.locator("#chat-view")).to_be_hidden()
        page.fill("#password-current", res.json()["password"])
        page.fill("#password-new", "day shift handover 7")
        page.fill("#password-repeat", "day shift handover 7")
        page.click("#password-submit")
        expect(page.locator("#chat-view")).to_be_visible(timeout=15_000)
        expect(page.locator(".conv-item")).to_have_count(1)  # the conversation from before
    finally:
        ctx.close()


def test_locked_user_is_unlocked_from_the_console(admin: Page, browser: Browser,
                                                  daemon: Daemon) -> None:
    porter = _new_user(daemon, "ui.porter", "user")
    ctx = _context(browser, daemon)
    try:
        page = _watch(ctx.new_page())
        page.goto("/")
        for _ in range(5):  # the lock threshold: five refusals of one name from one address
            _chat_sign_in(page, "ui.porter", "not-the-password")
            expect(page.locator("#login-error")).to_contain_text("Wrong username or password")

        admin.click("#tab-users")  # reloads the table
        expect(_state_cell(admin, "ui.porter")).to_have_text("locked")
        _manage(admin, "ui.porter")
        expect(admin.locator("#user-detail-summary")).to_contain_text("locked")
        expect(admin.locator("#user-unlock")).to_be_visible()
        shoot(admin, "user-locked")

        # Locked: even the right password gets the lockout message, which says what to do.
        _chat_sign_in(page, "ui.porter", porter["password"])
        error = page.locator("#login-error")
        expect(error).to_contain_text(re.compile(r"^Too many attempts; try again after \d\d:\d\d"))
        expect(error).to_contain_text("ask IT to unlock the account")
        expect(page.locator("#chat-view")).to_be_hidden()
        page.screenshot(path=str(ARTIFACTS / "chat-login-locked.png"), full_page=True)

        admin.click("#user-unlock")
        expect(admin.locator("#user-detail-msg")).to_contain_text("ui.porter is unlocked")
        expect(_state_cell(admin, "ui.porter")).to_have_text("active")
        expect(admin.locator("#user-unlock")).to_be_hidden()

        _chat_sign_in(page, "ui.porter", porter["password"])
        expect(page.locator("#chat-view")).to_be_visible(timeout=15_000)
    finally:
        ctx.close()


def test_disable_and_enable_again(admin: Page) -> None:
    _manage(admin, "ui.porter")
    admin.click("#user-disable")
    admin.click("#confirm-ok")
    expect(admin.locator("#user-detail-msg")).to_contain_text("ui.porter is disabled")
    expect(_state_cell(admin, "ui.porter")).to_have_text("disabled")
    expect(admin.locator("#user-disable")).to_be_hidden()
    expect(admin.locator("#user-enable")).to_be_visible()
    admin.click("#user-enable")
    expect(admin.locator("#user-detail-msg")).to_contain_text("ui.porter is enabled again")
    expect(_state_cell(admin, "ui.porter")).to_have_text("active")
    expect(admin.locator("#user-enable")).to_be_hidden()
    expect(admin.locator("#user-disable")).to_be_visible()
    # An erased account stays off: the server's refusal is shown.
    _manage(admin, "ui.temp")
    admin.click("#user-enable")
    expect(admin.locator("#user-detail-error")).to_contain_text("erased")
    expect(_state_cell(admin, "ui.temp")).to_have_text("disabled")
    admin.click("#user-close")


# ------------------------------------------------------------------------- auditor

@pytest.fixture(scope="module")
def auditor(browser: Browser, daemon: Daemon, people: dict[str, dict[str, str]]
            ) -> Iterator[Page]:
    ctx = _context(browser, daemon)
    page = _watch(ctx.new_page())
    page.goto("/admin")
    page.fill("#login-username", "ui.auditor")
    page.fill("#login-password", people["auditor"]["password"])
    page.click("#login-submit")  # no code
    expect(page.locator("#audit-view")).to_be_visible(timeout=10_000)
    yield page
    ctx.close()


def _settled(page: Page) -> None:
    """The audit table has the answer to the last filter or page click."""
    expect(page.locator("#audit-table")).to_have_attribute("aria-busy", "false")


def _actions(page: Page) -> list[str]:
    return page.locator("#audit-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.action).filter(Boolean)")


def _ids(page: Page) -> list[int]:
    return [int(x) for x in page.locator("#audit-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.id).filter(Boolean)")]


def test_auditor_sees_audit_events_without_content(auditor: Page) -> None:
    expect(auditor.locator("#whoami-text")).to_contain_text("auditor")
    expect(auditor.locator("#audit-table tbody tr[data-id]").first).to_be_visible()
    for action in ("admin.login", "user.create"):
        auditor.fill("#f-action", action)
        auditor.click("#f-apply")
        _settled(auditor)
        expect(auditor.locator("#audit-table tbody tr[data-id]").first).to_be_visible()
        acts = _actions(auditor)
        assert acts and set(acts) == {action}
    rows = auditor.locator("#audit-table tbody tr[data-id]")
    expect(rows.filter(has_text="ui.admin").first).to_be_visible()  # our own admin's login
    time_cell = auditor.locator("#audit-table tbody tr[data-id] time").first
    assert re.match(r"\d{4}-\d\d-\d\dT", time_cell.get_attribute("title") or "")
    shoot(auditor, "audit")
    # The admin views are not the auditor's.
    expect(auditor.locator("#admin-view")).to_be_hidden()


def test_auditor_filters_by_actor_and_time(auditor: Page) -> None:
    auditor.click("#f-clear")
    _settled(auditor)
    auditor.fill("#f-actor", "ui.admin")
    auditor.click("#f-apply")
    _settled(auditor)
    expect(auditor.locator("#audit-table tbody tr[data-id]").first).to_be_visible()
    actors = auditor.locator("#audit-table tbody tr[data-id] td:nth-child(3)").all_inner_texts()
    assert actors and set(actors) == {"ui.admin"}
    # A window entirely in the future matches nothing.
    auditor.click("#f-clear")
    _settled(auditor)
    auditor.fill("#f-since", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 86400)))
    auditor.click("#f-apply")
    _settled(auditor)
    expect(auditor.locator("#audit-table tbody")).to_contain_text("No events match")
    auditor.click("#f-clear")
    _settled(auditor)


def test_auditor_pages_through_events(auditor: Page) -> None:
    auditor.click("#f-clear")
    _settled(auditor)
    auditor.select_option("#f-limit", "10")
    auditor.click("#f-apply")
    _settled(auditor)
    expect(auditor.locator("#audit-table tbody tr[data-id]")).to_have_count(10)
    first_page = _ids(auditor)
    expect(auditor.locator("#audit-next")).to_be_enabled()
    expect(auditor.locator("#audit-first")).to_be_disabled()
    auditor.click("#audit-next")
    _settled(auditor)
    expect(auditor.locator("#audit-page")).to_contain_text("Page 2")
    second_page = _ids(auditor)
    # The newest events come first: each page goes further back.
    assert first_page == sorted(first_page, reverse=True)
    assert second_page and max(second_page) < min(first_page)
    auditor.click("#audit-first")
    _settled(auditor)
    expect(auditor.locator("#audit-page")).to_contain_text("Page 1")
    assert _ids(auditor) == first_page


def test_auditor_verifies_the_chain(auditor: Page) -> None:
    auditor.click("#verify")
    expect(auditor.locator("#verify-result")).to_contain_text("Chain OK")
    shoot(auditor, "audit-verified")


def test_ended_session_shows_the_login_form(auditor: Page) -> None:
    token = auditor.request.get("/auth/session").json()["csrf_token"]
    assert auditor.request.post("/auth/logout", headers={"X-CSRF-Token": token}).ok
    auditor.click("#verify")
    expect(auditor.locator("#login-view")).to_be_visible()
    expect(auditor.locator("#login-notice")).to_contain_text("Your session ended")
    expect(auditor.locator("#audit-table tbody tr")).to_have_count(0)  # data cleared


def test_logout_ends_the_admin_session(admin: Page) -> None:
    admin.click("#logout")
    expect(admin.locator("#login-view")).to_be_visible()
    assert admin.request.get("/admin/api/session").status == 401
    admin.reload()
    expect(admin.locator("#login-view")).to_be_visible()


def test_no_csp_violations_or_page_errors() -> None:
    assert CONSOLE_PROBLEMS == []
