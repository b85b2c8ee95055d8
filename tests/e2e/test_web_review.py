"""The auditor view's Access review tab, in a real Chromium against the real app over the
FakeEngine: a test user signs in on the chat page (and once with a wrong password), and the
auditor sees that sign-in counted, an account unused for 120 days listed as dormant, and
the CSV download of the same report; a bad dormant_days shows the server's message.
Screenshots go to test-artifacts/web/admin-review*.png."""

from __future__ import annotations

import csv
import io
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

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
    fake_web,
    sign_in_admin,
    submit_sign_in,
    watch_problems,
)
from tests.support.store_setup import add_users

DAY = 86400
IDLE_DAYS = 120


def _backdate(data_dir: Path, name: str, days: int) -> None:
    """The account was created ``days`` ago (written behind the running daemon's back)."""
    conn = sqlite3.connect(data_dir / "deepseekd.db", timeout=30)
    try:
        with conn:
            conn.execute("UPDATE users SET created_at = ? WHERE name = ?",
                         (time.time() - days * DAY, name))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def people(fake_web: FakeWeb) -> dict[str, str]:
    """Passwords of the auditor and the nurse; rv.idle, created 120 days ago, never used."""
    [auditor] = _run(add_users(fake_web.db_url, fake_web.data_dir, ["rv.auditor"], "auditor"))
    nurse, _ = _run(add_users(fake_web.db_url, fake_web.data_dir, ["rv.nurse", "rv.idle"]))
    _backdate(fake_web.data_dir, "rv.idle", IDLE_DAYS)
    assert auditor.password and nurse.password
    return {"rv.auditor": auditor.password, "rv.nurse": nurse.password}


@pytest.fixture(scope="module")
def nurse_signed_in(browser: Browser, fake_web: FakeWeb, people: dict[str, str]) -> None:
    """rv.nurse signs in on the chat page: once with a wrong password, then rightly."""
    ctx = browser.new_context(base_url=fake_web.url, viewport=DESKTOP)
    page = ctx.new_page()
    page.goto("/")
    page.wait_for_selector("#login-view:not([hidden])")
    submit_sign_in(page, "rv.nurse", "not-the-password")
    expect(page.locator("#login-error")).to_be_visible()
    page.fill("#login-password", people["rv.nurse"])
    page.click("#login-submit")
    page.wait_for_selector("#chat-view:not([hidden])")
    ctx.close()


@pytest.fixture(scope="module")
def auditor(browser: Browser, fake_web: FakeWeb, people: dict[str, str],
            nurse_signed_in: None) -> Iterator[Page]:
    ctx = browser.new_context(base_url=fake_web.url, viewport=DESKTOP, accept_downloads=True)
    problems: list[str] = []
    page = watch_problems(ctx.new_page(), problems)
    sign_in_admin(page, "rv.auditor", people["rv.auditor"])  # an auditor gives no code
    yield page
    assert problems == [], problems  # no CSP refusal, no script error
    ctx.close()


def _settled(page: Page) -> None:
    expect(page.locator("#access-review-body")).to_have_attribute("aria-busy", "false")


def _cells(page: Page, selector: str) -> list[str]:
    return [c.strip() for c in page.locator(selector).locator("th, td").all_inner_texts()]




def test_the_auditor_sees_sign_ins_and_dormant_accounts(auditor: Page) -> None:
    auditor.click("#atab-access")
    expect(auditor.locator("#panel-access-review")).to_be_visible()
    nurse = auditor.locator('#review-signins tr[data-user="rv.nurse"]')
    expect(nurse).to_be_visible()
    _settled(auditor)
    cells = _cells(auditor, '#review-signins tr[data-user="rv.nurse"]')
    assert cells[:4] == ["rv.nurse", "user", "1", "1"]  # one sign-in, one refused
    assert cells[4] != "—" and cells[5] != "—"
    idle = auditor.locator('#review-dormant tr[data-user="rv.idle"]')
    expect(idle).to_be_visible()
    cells = _cells(auditor, '#review-dormant tr[data-user="rv.idle"]')
    assert cells[:3] == ["rv.idle", "user", "local"]
    assert (cells[4], cells[5]) == ("never", str(IDLE_DAYS))
    expect(auditor.locator('#review-dormant tr[data-user="rv.nurse"]')).to_have_count(0)
    expect(auditor.locator("#review-dormant-count")).to_have_text("(1)")
    # Captions name the tables for screen readers; the summary says what the period was.
    captions = auditor.locator("#panel-access-review caption").all_inner_texts()
    assert [c.split(" (")[0] for c in captions] == [
        "Who accessed whose data", "Sign-ins per account", "Dormant accounts",
        "Admins without a recent second factor"]
    expect(auditor.locator("#review-summary")).to_contain_text("sign-in(s)")
    # No admin here: the admins table says so instead of staying blank.
    expect(auditor.locator("#review-admins tbody tr.empty")).to_contain_text("Every enabled admin")
    shoot(auditor, "review")


def test_the_csv_download_is_the_same_report(auditor: Page) -> None:
    auditor.click("#atab-access")
    _settled(auditor)
    expect(auditor.locator('#review-signins tr[data-user="rv.nurse"]')).to_be_visible()
    with auditor.expect_download() as info:
        auditor.click("#review-csv")
    download = info.value
    assert download.suggested_filename.startswith("access-review-")
    rows = list(csv.reader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    assert ["dormant", "rv.idle", "user", "local"] == [c for c in _find(rows, "rv.idle")][:4]
    assert _find(rows, "rv.nurse", "sign_ins")[2:5] == ["user", "1", "1"]


def _find(rows: list[list[str]], user: str, section: str = "dormant") -> list[str]:
    [row] = [r for r in rows if r[:2] == [section, user]]
    return row


def test_a_shorter_threshold_and_a_bad_one(auditor: Page) -> None:
    auditor.click("#atab-access")
    _settled(auditor)
    auditor.fill("#review-days", "5000")
    auditor.click("#review-apply")
    expect(auditor.locator("#review-error")).to_have_text(
        "Dormant after (days): a whole number of days from 1 to 3650.")
    expect(auditor.locator("#review-days")).to_have_attribute("aria-invalid", "true")
    auditor.fill("#review-days", str(IDLE_DAYS + 1))
    auditor.click("#review-apply")
    expect(auditor.locator("#review-error")).to_be_hidden()
    expect(auditor.locator("#review-days")).not_to_have_attribute("aria-invalid", "true")
    expect(auditor.locator("#review-dormant tbody tr.empty")).to_contain_text(
        f"{IDLE_DAYS + 1} days")
    assert "dormant_days=121" in (auditor.locator("#review-csv").get_attribute("href") or "")
