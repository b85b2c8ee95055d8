"""Break-glass (emergency access) in the console, in a real Chromium against the real app
over the FakeEngine in echo mode (the model plays no part here; the daemon runs with
``[breakglass] allowed = ["bg.boss"]`` from the environment):

* an allowed admin starts a read_history break-glass with a reason and a fresh TOTP code (a
  wrong code is refused beside the field without ending the session), reads another user's
  conversation read-only (its text verbatim, markup shown as text), stops it: the Read
  button goes and the API refuses further reads;
* the auditor sees it with its start, read and stop events and marks it reviewed with a
  comment; it then shows as reviewed (to the auditor and in the admin's list);
* an admin not on the allowed list sees the warning and no form;
* signing out leaves nothing of it in the page; no CSP refusal or script error anywhere.

Screenshots go to test-artifacts/web/admin-breakglass*.png.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pyotp
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.web_fixtures import (  # noqa: F401  (fixtures)
    shoot_admin as shoot,
    ARTIFACTS,
    DESKTOP,
    PHONE,
    FakeWeb,
    _run,
    browser,
    sign_in_admin,
    start_fake_web,
)
from tests.support.store_setup import add_users

HOLDER, OTHER, AUDITOR, PATIENT = "bg.boss", "bg.other", "bg.auditor", "bg.patient"
# Markup and markdown in the stored text: the reader must show them as typed.
NOTE = "Allergy note 7f3a: <b>penicillin</b> **severe** <img src=x>"
PROBLEMS: list[str] = []
"""CSP refusals and script errors seen in any page of this module."""


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeWeb]:
    w = start_fake_web(tmp_path_factory.mktemp("breakglass-web"),
                       DEEPSEEKD_BREAKGLASS__ALLOWED=HOLDER)
    try:
        yield w
    finally:
        w.stop(timeout=30)


@pytest.fixture(scope="module")
def people(web: FakeWeb) -> dict[str, Any]:
    [holder, other] = _run(add_users(web.db_url, web.data_dir, [HOLDER, OTHER], "admin"))
    [auditor] = _run(add_users(web.db_url, web.data_dir, [AUDITOR], "auditor"))
    [patient] = _run(add_users(web.db_url, web.data_dir, [PATIENT]))
    return {"holder": holder, "other": other, "auditor": auditor, "patient": patient}


@pytest.fixture(scope="module")
def conversation(web: FakeWeb, people: dict[str, Any]) -> str:
    """A conversation of the patient's, made through the API as the patient; its id."""
    r = httpx.post(web.url + "/v1/chat/completions", timeout=60,
                   headers={"Authorization": f"Bearer {people['patient'].api_key}"},
                   json={"model": "fake-model", "max_tokens": 40,
                         "messages": [{"role": "user", "content": NOTE}]})
    assert r.status_code == 200, r.text
    return r.headers["X-Conversation-Id"]


@pytest.fixture(scope="module")
def shared() -> dict[str, Any]:
    """What one test learns and a later one needs (tests in this module run in order)."""
    return {}


def _watch(page: Page) -> Page:
    page.on("console", lambda m: PROBLEMS.append(f"{page.url}: {m.text}") if m.type == "error"
            and ("Content Security Policy" in m.text or "Refused to" in m.text) else None)
    page.on("pageerror", lambda e: PROBLEMS.append(f"{page.url}: pageerror {e}"))
    return page


def _totp(user: Any) -> pyotp.TOTP:
    return pyotp.TOTP(pyotp.parse_uri(user.totp_uri).secret)


def _sign_in(browser: Browser, web: FakeWeb, user: Any, code: str = "") -> Page:
    ctx = browser.new_context(base_url=web.url, viewport=DESKTOP)
    page = _watch(ctx.new_page())
    sign_in_admin(page, user.name, user.password, code, timeout_ms=15_000)
    return page


@pytest.fixture(scope="module")
def console(browser: Browser, web: FakeWeb, people: dict[str, Any],
            shared: dict[str, Any]) -> Iterator[Page]:
    """The allowed admin's console; the TOTP step its sign-in used up."""
    shared["login_step"] = int(time.time()) // 30
    page = _sign_in(browser, web, people["holder"], _totp(people["holder"]).now())
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def auditor(browser: Browser, web: FakeWeb, people: dict[str, Any]) -> Iterator[Page]:
    page = _sign_in(browser, web, people["auditor"])
    yield page
    page.context.close()




def _fresh_code(user: Any, used_step: int) -> str:
    """A code from a later 30 s step than ``used_step`` (each step's code works once)."""
    while int(time.time()) // 30 <= used_step:
        time.sleep(0.5)
    return _totp(user).now()


# ------------------------------------------------------------------------- not allowed

def test_an_admin_not_on_the_list_sees_the_warning_and_no_form(
        browser: Browser, web: FakeWeb, people: dict[str, Any]) -> None:
    page = _sign_in(browser, web, people["other"], _totp(people["other"]).now())
    try:
        page.click("#tab-breakglass")
        expect(page.locator("#bg-warning")).to_contain_text("Emergency use only")
        note = page.locator("#bg-not-allowed")
        expect(note).to_be_visible()
        expect(note).to_contain_text("[breakglass]")
        expect(page.locator("#bg-form")).to_be_hidden()
        expect(page.locator("#bg-sessions-box")).to_be_hidden()
        shoot(page, "breakglass-not-allowed")
    finally:
        page.context.close()


# ------------------------------------------------------------------------- the holder

def test_the_form_asks_for_what_the_scope_needs(console: Page) -> None:
    console.click("#tab-breakglass")
    warning = console.locator("#bg-warning")
    for words in ("Emergency use only", "recorded", "notified", "reviews"):
        expect(warning).to_contain_text(words)
    expect(console.locator("#bg-form")).to_be_visible()
    expect(console.locator("#bg-minutes")).to_have_value("60")
    assert console.locator("#bg-minutes").get_attribute("max") == "240"
    # The user field shows only for the scopes about one user.
    expect(console.locator("#bg-target-field")).to_be_hidden()
    console.get_by_label("Act as administrator (directory down)").check()
    expect(console.locator("#bg-target-field")).to_be_hidden()
    console.get_by_label("Lift one user's daily quota").check()
    expect(console.locator("#bg-target-field")).to_be_visible()
    console.get_by_label("Read one user's chat history").check()
    expect(console.locator("#bg-target")).to_be_visible()
    # Nothing is asked of the server with a field missing: each says what it needs.
    console.click("#bg-start")
    expect(console.locator("#bg-target-error")).to_be_visible()
    expect(console.locator("#bg-reason-error")).to_be_visible()
    expect(console.locator("#bg-totp-error")).to_be_visible()
    expect(console.locator("#bg-target")).to_be_focused()  # the first one missing
    expect(console.locator("#confirm")).to_be_hidden()
    shoot(console, "breakglass-form")


def _fill(console: Page, code: str) -> None:
    console.get_by_label("Read one user's chat history").check()
    console.fill("#bg-target", PATIENT)
    console.select_option("#bg-reason-code", "treatment")
    console.fill("#bg-reason", "Unconscious patient in ED bay 3; allergy history needed now.")
    console.fill("#bg-minutes", "30")
    console.fill("#bg-totp", code)


def test_a_wrong_code_is_refused_beside_the_field(console: Page, shared: dict[str, Any]) -> None:
    console.click("#tab-breakglass")
    _fill(console, "000000")
    console.click("#bg-start")
    expect(console.locator("#confirm-text")).to_contain_text(PATIENT)
    console.click("#confirm-ok")
    expect(console.locator("#bg-totp-error")).to_contain_text("code")
    expect(console.locator("#bg-totp")).to_have_value("")  # never kept
    expect(console.locator("#admin-view")).to_be_visible()  # still signed in
    expect(console.locator("#bg-sessions tbody tr[data-id]")).to_have_count(0)


def test_the_holder_starts_a_read_history_break_glass(console: Page, people: dict[str, Any],
                                                     shared: dict[str, Any]) -> None:
    code = _fresh_code(people["holder"], shared["login_step"])
    _fill(console, code)
    console.click("#bg-start")
    dialog = console.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(console.locator("#confirm-text")).to_contain_text(f"chat history of {PATIENT}")
    expect(console.locator("#confirm-text")).to_contain_text("30 minutes")
    console.click("#confirm-ok")
    expect(console.locator("#bg-result")).to_contain_text("started")
    row = console.locator('#bg-sessions tbody tr[data-state="active"]')
    expect(row).to_have_count(1)
    expect(row).to_contain_text(PATIENT)
    expect(row).to_contain_text("Patient treatment")
    expect(row).to_contain_text("ED bay 3")
    expect(row.locator(".bg-left")).to_contain_text("min left")
    expect(row.get_by_role("button", name="Read the chat history")).to_be_visible()
    shared["id"] = int(row.get_attribute("data-id") or 0)
    assert shared["id"] > 0
    expect(console.locator("#bg-reason")).to_have_value("")
    expect(console.locator("#bg-totp")).to_have_value("")


def test_the_holder_reads_the_patients_conversation(console: Page, conversation: str,
                                                   shared: dict[str, Any]) -> None:
    row = console.locator(f'#bg-sessions tbody tr[data-id="{shared["id"]}"]')
    row.get_by_role("button", name="Read the chat history").click()
    reader = console.locator("#bg-reader")
    expect(reader).to_be_visible()
    expect(console.locator("#bg-reader-banner")).to_have_text(
        "Break-glass access — every read is recorded.")
    item = console.locator(f'#bg-conversations button[data-conversation="{conversation}"]')
    expect(item).to_have_count(1)
    item.click()
    messages = console.locator("#bg-messages li")
    expect(messages).to_have_count(2)  # the question and the echoed answer
    first = messages.nth(0)
    expect(first.locator(".bg-role")).to_have_text("User")
    expect(first.locator(".bg-text")).to_have_text(NOTE)  # verbatim: markup is text
    expect(messages.nth(1).locator(".bg-role")).to_have_text("Assistant")
    expect(messages.nth(1).locator(".bg-text")).to_contain_text("penicillin")
    assert console.locator("#bg-reader b, #bg-reader img, #bg-reader strong.bg-text").count() == 0
    shoot(console, "breakglass-reading")


def test_stopping_ends_the_reading(console: Page, conversation: str,
                                   shared: dict[str, Any]) -> None:
    bg_id = shared["id"]
    row = console.locator(f'#bg-sessions tbody tr[data-id="{bg_id}"]')
    row.get_by_role("button", name=f"Stop break-glass #{bg_id}").click()
    expect(console.locator("#confirm-text")).to_contain_text(f"#{bg_id}")
    console.click("#confirm-ok")
    expect(row).to_have_attribute("data-state", "ended")
    expect(row).to_contain_text("stopped")
    expect(row).to_contain_text("Not reviewed yet")
    expect(row.get_by_role("button")).to_have_count(0)  # no Read, no Stop
    expect(console.locator("#bg-reader")).to_be_hidden()
    expect(console.locator("#bg-messages li")).to_have_count(0)
    for path in (f"/admin/api/breakglass/{bg_id}/conversations",
                 f"/admin/api/breakglass/{bg_id}/conversations/{conversation}"):
        res = console.request.get(path)
        assert res.status == 403, (path, res.status, res.text())
        assert res.json()["error"]["code"] == "breakglass_inactive"
    shoot(console, "breakglass-stopped")


# ------------------------------------------------------------------------- the auditor

def _seed_overdue(web: FakeWeb) -> int:
    """A break-glass that expired two days ago and was never reviewed, written behind the
    running daemon's back; its id."""
    now = time.time()
    conn = sqlite3.connect(web.data_dir / "deepseekd.db", timeout=30)
    try:
        with conn:
            cur = conn.execute(
                "INSERT INTO breakglass (user_id, actor, reason_code, reason, scope, target,"
                " started_at, expires_at, ended_at, end_reason)"
                " VALUES (NULL, 'bg.nightshift', 'recovery', 'Directory down overnight.',"
                " 'admin', NULL, ?, ?, ?, 'expired')",
                (now - 2 * 86400 - 3600, now - 2 * 86400, now - 2 * 86400))
            return int(cur.lastrowid or 0)
    finally:
        conn.close()


def test_an_overdue_one_says_so_in_words(auditor: Page, web: FakeWeb,
                                         shared: dict[str, Any]) -> None:
    old = _seed_overdue(web)
    auditor.click("#atab-breakglass")
    card = auditor.locator(f'#bgr-list article[data-id="{old}"]')
    expect(card).to_have_class(re.compile(r"\boverdue\b"))
    expect(card.locator(".badge.overdue")).to_have_text("Overdue: not reviewed within 24 hours")
    expect(card).to_contain_text("expired (time ran out)")
    expect(card).to_contain_text("Act as administrator (directory down)")
    expect(auditor.locator("#bgr-summary")).to_contain_text("2 break-glass session(s) not reviewed yet, 1 overdue")
    # The newer one is ended but not late: no overdue mark.
    mine = auditor.locator(f'#bgr-list article[data-id="{shared["id"]}"]')
    expect(mine.locator(".badge.overdue")).to_have_count(0)
    shoot(auditor, "breakglass-overdue")


def test_the_auditor_sees_what_was_done_and_reviews_it(auditor: Page,
                                                        shared: dict[str, Any]) -> None:
    bg_id = shared["id"]
    auditor.click("#atab-breakglass")
    card = auditor.locator(f'#bgr-list article[data-id="{bg_id}"]')
    expect(card).to_be_visible()
    for text in (HOLDER, "Read one user's chat history", PATIENT, "Patient treatment",
                 "ED bay 3", "stopped"):
        expect(card).to_contain_text(text)
    actions = card.locator("table.bg-events tbody tr")
    expect(actions.first).to_be_visible()
    seen = set(card.locator("table.bg-events tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.action)"))
    assert {"breakglass.start", "breakglass.read", "breakglass.stop"} <= seen, seen
    expect(card.locator('tr[data-action="breakglass.read"]').first).to_contain_text("read: list")
    expect(card.locator("text=Awaiting review")).to_be_visible()
    shoot(auditor, "breakglass-review")
    # A comment is required.
    card.get_by_role("button", name=f"Mark break-glass #{bg_id} reviewed").click()
    expect(card.get_by_role("alert")).to_be_visible()
    card.get_by_label("Review comment").fill("Checked with ED lead: justified, ended promptly.")
    card.get_by_role("button", name=f"Mark break-glass #{bg_id} reviewed").click()
    card = auditor.locator(f'#bgr-list article[data-id="{bg_id}"]')
    expect(card).to_have_attribute("data-state", "reviewed")
    expect(card.locator(".bg-reviewed")).to_contain_text(f"Reviewed by {AUDITOR}")
    expect(card.locator(".bg-reviewed")).to_contain_text("justified, ended promptly")
    expect(card.locator("textarea")).to_have_count(0)
    # No longer waiting; still listed under "all", as reviewed.
    auditor.click("#bgr-refresh")
    expect(auditor.locator(f'#bgr-list article[data-id="{bg_id}"]')).to_have_count(0)
    auditor.select_option("#bgr-status", "all")
    card = auditor.locator(f'#bgr-list article[data-id="{bg_id}"]')
    expect(card).to_have_attribute("data-state", "reviewed")
    expect(card.locator(".badge.reviewed")).to_have_text("Reviewed")


def test_the_holder_sees_the_review(console: Page, shared: dict[str, Any]) -> None:
    console.click("#tab-users")
    console.click("#tab-breakglass")
    row = console.locator(f'#bg-sessions tbody tr[data-id="{shared["id"]}"]')
    expect(row).to_contain_text(f"Reviewed by {AUDITOR}")


# ------------------------------------------------------------------------- sign-out

def test_signing_out_leaves_nothing_shown(console: Page, auditor: Page) -> None:
    console.click("#logout")
    expect(console.locator("#login-view")).to_be_visible()
    assert console.locator("#bg-sessions tbody tr").count() == 0
    assert console.locator("#bg-scope-options input").count() == 0
    expect(console.locator("#bg-reader")).to_be_hidden()
    auditor.click("#logout")
    expect(auditor.locator("#login-view")).to_be_visible()
    assert auditor.locator("#bgr-list > *").count() == 0
    assert PROBLEMS == [], PROBLEMS  # no CSP refusal, no script error in any page
