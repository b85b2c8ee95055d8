"""The admin console's Users view in a real Chromium against the real app: search (as you
type), sortable headings (aria-sort), pages ("N–M of T"), the last sign-in and today's
requests columns, and the CSV import: a dry run, a file with one bad row (nothing created),
the fixed file imported, the credentials downloaded once; markup in a file shows as text.
Screenshots go to test-artifacts/web/admin-users*.png (desktop and 390px)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.web_fixtures import (  # noqa: F401  (fixtures)
    shoot_admin as shoot,
    DESKTOP,
    FakeWeb,
    _run,
    browser,
    fake_web,
    sign_in_admin,
    totp_now,
    watch_problems,
)
from tests.support.store_setup import add_users

CLERKS = [f"clerk.{i:02d}" for i in range(55)]  # with the admin: two pages of 50


@pytest.fixture(scope="module")
def boss(fake_web: FakeWeb) -> dict[str, str]:
    [admin] = _run(add_users(fake_web.db_url, fake_web.data_dir, ["ui.boss"], "admin"))
    _run(add_users(fake_web.db_url, fake_web.data_dir, CLERKS))
    _run(add_users(fake_web.db_url, fake_web.data_dir, ["ward.audit"], "auditor"))
    assert admin.password and admin.totp_uri
    return {"name": admin.name, "password": admin.password, "totp_uri": admin.totp_uri}


@pytest.fixture(scope="module")
def console(browser: Browser, fake_web: FakeWeb, boss: dict[str, str]) -> Iterator[Page]:
    ctx = browser.new_context(base_url=fake_web.url, viewport=DESKTOP, accept_downloads=True)
    page = ctx.new_page()
    problems: list[str] = []
    watch_problems(page, problems)
    page.on("dialog", lambda d: problems.append(f"dialog {d.message}"))  # alert() = XSS
    sign_in_admin(page, boss["name"], boss["password"], totp_now(boss["totp_uri"]))
    yield page
    assert problems == [], problems  # no CSP refusal, no script error, no alert
    ctx.close()


ROWS = "#users-table tbody tr[data-user]"


def _names(page: Page) -> list[str]:
    return page.locator(ROWS).evaluate_all("rows => rows.map(r => r.dataset.user)")


def test_pages_and_the_new_columns(console: Page) -> None:
    console.click("#tab-users")
    expect(console.locator("#users-range")).to_have_text("1–50 of 57")
    expect(console.locator(ROWS)).to_have_count(50)
    expect(console.locator("#users-prev")).to_be_disabled()
    headers = console.locator("#users-table thead th").all_inner_texts()
    assert any("Last sign-in" in h for h in headers) and any("Requests today" in h for h in headers)
    # The admin signed in just now; a clerk never did.
    last = [h.strip().rstrip("↕↑↓ ").strip() for h in headers].index("Last sign-in")
    clerk = console.locator('#users-table tr[data-user="clerk.00"] th, '
                            '#users-table tr[data-user="clerk.00"] td')
    expect(clerk.nth(last)).to_have_text("—")
    console.click("#users-next")
    expect(console.locator("#users-range")).to_have_text("51–57 of 57")
    expect(console.locator(ROWS)).to_have_count(7)
    assert _names(console)[-2:] == ["ui.boss", "ward.audit"]
    expect(console.locator("#users-next")).to_be_disabled()
    console.click("#users-prev")
    expect(console.locator("#users-range")).to_have_text("1–50 of 57")


def test_sortable_headings(console: Page) -> None:
    console.click("#tab-users")
    name = console.locator('#users-table th[data-sort="name"]')
    expect(name).to_have_attribute("aria-sort", "ascending")
    name.locator("button").focus()
    console.keyboard.press("Enter")  # the keyboard sorts too
    expect(name).to_have_attribute("aria-sort", "descending")
    expect(console.locator(ROWS).first).to_have_attribute("data-user", "ward.audit")
    last = console.locator('#users-table th[data-sort="last_login"]')
    last.locator("button").click()
    expect(last).to_have_attribute("aria-sort", "descending")
    expect(name).not_to_have_attribute("aria-sort", "descending")
    expect(console.locator(ROWS).first).to_have_attribute("data-user", "ui.boss")
    name.locator("button").click()
    expect(name).to_have_attribute("aria-sort", "ascending")


def test_search_as_you_type(console: Page) -> None:
    console.click("#tab-users")
    console.fill("#users-search", "CLERK.0")
    expect(console.locator("#users-range")).to_have_text("1–10 of 10")
    expect(console.locator(ROWS)).to_have_count(10)
    console.fill("#users-search", "nobody-like-this")
    expect(console.locator("#users-range")).to_have_text("0 of 0")
    expect(console.locator("#users-table tbody")).to_contain_text("No users.")
    console.fill("#users-search", "ward")
    expect(console.locator(ROWS)).to_have_count(1)
    # The actions still work on a searched list.
    console.locator('#users-table tr[data-user="ward.audit"] button').click()
    expect(console.locator("#user-detail-title")).to_have_text("User ward.audit")
    console.click("#user-disable")
    console.click("#confirm-ok")
    expect(console.locator('#users-table tr[data-user="ward.audit"]')).to_contain_text("disabled")
    console.click("#user-enable")
    expect(console.locator('#users-table tr[data-user="ward.audit"]')).to_contain_text("active")
    console.click("#user-close")
    console.fill("#users-search", "")
    expect(console.locator("#users-range")).to_have_text("1–50 of 57")


def _choose(page: Page, tmp: Path, text: str, name: str = "users.csv") -> None:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    page.set_input_files("#import-file", str(path))


def test_import_dry_run_then_import(console: Page, tmp_path: Path) -> None:
    console.click("#tab-users")
    xss = '<img src=x onerror=alert(1)>'
    bad = ("name,role,groups\nnew.one,user,Radiology\n"
           f"\"{xss}\",user,\"<script>alert(2)</script>\"\n")
    _choose(console, tmp_path, bad)
    console.click("#import-check")
    report = console.locator("#import-table tbody tr")
    expect(report).to_have_count(2)
    expect(report.nth(0)).to_contain_text("Would create")
    expect(report.nth(1)).to_contain_text("Error: name:")
    expect(report.nth(1).locator("th")).to_have_text(xss)  # shown as text
    expect(report.nth(1)).to_contain_text("<script>alert(2)</script>")
    assert console.locator("#import-table img, #import-table script").count() == 0
    expect(console.locator("#import-error")).to_contain_text("1 row(s) cannot be imported")
    expect(console.locator("#import-run")).to_be_disabled()  # not with a bad row
    shoot(console, "users-import-check")
    _choose(console, tmp_path, "name,role,groups,daily_requests\nnew.one,user,Radiology,20\n"
                               "new.two,auditor,,\n", "users-fixed.csv")
    console.click("#import-check")
    expect(console.locator("#import-msg")).to_have_text("2 users would be created.")
    expect(console.locator("#import-run")).to_be_enabled()
    console.click("#import-run")
    expect(console.locator("#import-msg")).to_contain_text("2 users created")
    expect(console.locator("#import-table tbody tr").nth(0)).to_contain_text("Created")
    expect(console.locator("#users-range")).to_have_text("1–50 of 59")
    with console.expect_download() as info:
        console.click("#import-download")
    got = info.value.path().read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(got)))
    assert [(r["name"], r["role"]) for r in rows] == [("new.one", "user"), ("new.two", "auditor")]
    assert all(len(r["temporary_password"]) >= 12 for r in rows)
    expect(console.locator("#import-download")).to_be_hidden()  # once
    expect(console.locator("#import-msg")).to_contain_text("Credentials downloaded")
    console.fill("#users-search", "new.")
    expect(console.locator(ROWS)).to_have_count(2)
    expect(console.locator('#users-table tr[data-user="new.one"]')).to_contain_text(
        "new password pending")
    console.fill("#users-search", "")
    expect(console.locator("#users-range")).to_have_text("1–50 of 59")
    shoot(console, "users")
