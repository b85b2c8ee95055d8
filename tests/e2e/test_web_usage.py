"""The admin console's Usage view (usage per department) and the users table's Source and
Groups columns, in a real Chromium against the real app over the FakeEngine (the usage is
seeded straight into its store). Screenshots go to test-artifacts/web/admin-usage*.png."""

from __future__ import annotations

import csv
import datetime as dt
import io
import sqlite3
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
    totp_now,
    watch_problems,
)
from tests.support.store_setup import add_users

TODAY = dt.datetime.now(dt.UTC).date()  # the quota day (UTC, reset at midnight by default)
YESTERDAY = TODAY - dt.timedelta(days=1)

# name: (source, groups as stored, {day: requests})
PEOPLE: dict[str, tuple[str, str | None, dict[dt.date, int]]] = {
    "ui.alice": ("ldap", "Cardiology\nRadiology", {YESTERDAY: 3, TODAY: 2}),
    "ui.bob": ("oidc", "cardiology", {TODAY: 4}),
    "ui.carol": ("local", None, {YESTERDAY: 1}),
}


def _seed(data_dir: Path) -> None:
    """Groups and daily counts, written behind the running daemon's back."""
    conn = sqlite3.connect(data_dir / "deepseekd.db", timeout=30)
    try:
        with conn:
            for name, (source, groups, days) in PEOPLE.items():
                conn.execute("UPDATE users SET source = ?, groups = ? WHERE name = ?",
                             (source, groups, name))
                for day, requests in days.items():
                    conn.execute(
                        "INSERT INTO quota_usage (user_id, day, requests, tokens, reasoning_tokens)"
                        " SELECT id, ?, ?, ?, 0 FROM users WHERE name = ?",
                        (day.isoformat(), requests, requests * 10, name))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def boss(fake_web: FakeWeb) -> dict[str, str]:
    """An admin (with TOTP) and the people above, seeded."""
    [admin] = _run(add_users(fake_web.db_url, fake_web.data_dir, ["ui.boss"], "admin"))
    _run(add_users(fake_web.db_url, fake_web.data_dir, list(PEOPLE)))
    _seed(fake_web.data_dir)
    assert admin.password and admin.totp_uri
    return {"name": admin.name, "password": admin.password, "totp_uri": admin.totp_uri}


@pytest.fixture(scope="module")
def console(browser: Browser, fake_web: FakeWeb, boss: dict[str, str]) -> Iterator[Page]:
    ctx = browser.new_context(base_url=fake_web.url, viewport=DESKTOP, accept_downloads=True)
    page = ctx.new_page()
    problems: list[str] = []
    watch_problems(page, problems)
    sign_in_admin(page, boss["name"], boss["password"], totp_now(boss["totp_uri"]))
    yield page
    assert problems == [], problems  # no CSP refusal, no script error
    ctx.close()




def _cells(page: Page, selector: str) -> list[list[str]]:
    rows = page.locator(selector)
    return [[c.strip() for c in rows.nth(i).locator("th, td").all_inner_texts()]
            for i in range(rows.count())]


def test_users_table_shows_source_and_groups(console: Page) -> None:
    console.click("#tab-users")
    headers = console.locator("#users-table thead th").all_inner_texts()
    assert "Source" in headers and "Groups" in headers
    source = headers.index("Source")
    alice = console.locator('#users-table tr[data-user="ui.alice"]')
    expect(alice).to_contain_text("Cardiology, Radiology")
    expect(alice.locator("th, td").nth(source)).to_have_text("LDAP")
    expect(console.locator('#users-table tr[data-user="ui.bob"] td.source')).to_have_text("OIDC")
    expect(console.locator('#users-table tr[data-user="ui.boss"] td.source')).to_have_text("local")
    expect(console.locator('#users-table tr[data-user="ui.boss"] td.groups')).to_have_text("—")


def test_usage_view_shows_the_table_the_chart_and_the_csv_link(console: Page) -> None:
    console.click("#tab-usage")
    expect(console.locator("#panel-usage")).to_be_visible()
    rows = console.locator("#usage-table tbody tr[data-group]")
    expect(rows).to_have_count(5)
    y, t = YESTERDAY.isoformat(), TODAY.isoformat()
    assert _cells(console, "#usage-table tbody tr[data-group]") == [
        ["(no group)", y, "1", "10", "0", "1"],
        ["Cardiology", y, "3", "30", "0", "1"],
        ["Cardiology", t, "6", "60", "0", "2"],  # alice and bob ("cardiology")
        ["Radiology", y, "3", "30", "0", "1"],  # alice, in both groups
        ["Radiology", t, "2", "20", "0", "1"],
    ]
    start = (TODAY - dt.timedelta(days=29)).isoformat()
    expect(console.locator("#usage-from")).to_have_value(start)
    expect(console.locator("#usage-to")).to_have_value(t)
    bars = console.locator("#usage-chart svg rect.bar")
    expect(bars).to_have_count(5)  # one per group and day with requests
    assert console.locator('#usage-chart svg rect.bar[data-group="Cardiology"]').count() == 2
    expect(console.locator("#usage-legend li")).to_have_count(3)
    href = console.locator("#usage-csv").get_attribute("href") or ""
    assert href == f"/admin/api/usage?from={start}&to={t}&format=csv"
    shoot(console, "usage")


def test_usage_filters_and_csv_download(console: Page) -> None:
    console.click("#tab-usage")
    y = YESTERDAY.isoformat()
    console.fill("#usage-from", y)
    console.fill("#usage-to", y)
    console.select_option("#usage-group", "Radiology")
    console.click("#usage-apply")
    expect(console.locator("#usage-table tbody tr[data-group]")).to_have_count(1)
    expect(console.locator("#usage-chart svg rect.bar")).to_have_count(1)
    href = console.locator("#usage-csv").get_attribute("href") or ""
    assert href == f"/admin/api/usage?from={y}&to={y}&group=Radiology&format=csv"
    with console.expect_download() as info:
        console.click("#usage-csv")
    download = info.value
    assert download.suggested_filename == f"usage-{y}-{y}.csv"
    text = Path(download.path()).read_text()
    assert list(csv.reader(io.StringIO(text))) == [
        ["group", "day", "requests", "tokens", "reasoning_tokens", "users"],
        ["Radiology", y, "3", "30", "0", "1"],
    ]
    # A range the wrong way round is refused before asking the server.
    console.fill("#usage-from", TODAY.isoformat())
    console.click("#usage-apply")
    expect(console.locator("#usage-error")).to_contain_text("after")
    console.select_option("#usage-group", "")
    console.fill("#usage-from", y)
    console.click("#usage-apply")
    expect(console.locator("#usage-error")).to_be_hidden()
    expect(console.locator("#usage-table tbody tr[data-group]")).to_have_count(3)


def test_tabs_still_end_on_settings(console: Page) -> None:
    console.focus("#tab-usage")
    console.keyboard.press("End")
    expect(console.locator("#panel-settings")).to_be_visible()
    console.keyboard.press("ArrowLeft")
    expect(console.locator("#tab-breakglass")).to_be_focused()
    expect(console.locator("#panel-breakglass")).to_be_visible()
    console.keyboard.press("ArrowLeft")
    expect(console.locator("#tab-keys")).to_be_focused()
    console.keyboard.press("ArrowLeft")
    expect(console.locator("#panel-usage")).to_be_visible()
