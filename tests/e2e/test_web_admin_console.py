"""The admin console's usage charts, LoRA adapters tab, master key line and setting labels, in
a real Chromium against the real app over the FakeEngine (its own daemon for this module,
with LoRA adapters enabled: the fake engine takes any adapter the service has checked).

* Usage: requests and tokens per day as SVG bars that match the data, failed and refused
  requests per day (real quota refusals), the top users with bars; text alternatives (the
  aria-label sums each chart up, the same numbers as a table); a user and group name holding
  markup stays text.
* LoRA: the list, a load refused for a folder that is not there (the server's message by the
  field), a real load from the inbox, a name already loaded, unload after a confirmation.
* The master key's version, age and last rotation in the header at all times, a warning once
  it is older than [keys] rotation_days, and the change after a rotation from the Keys tab.
* Settings by their human label and help text, the config name small beside them.

Screenshots at desktop and 390 px width: test-artifacts/web/admin-console-*.png.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.api.test_lora import make_adapter
from tests.e2e.web_fixtures import (  # noqa: F401  (fixtures)
    DESKTOP,
    FakeWeb,
    _run,
    browser,
    shoot_admin,
    sign_in_admin,
    start_fake_web,
    totp_now,
    watch_problems,
)
from tests.support.store_setup import add_users

TODAY = dt.datetime.now(dt.UTC).date()  # the quota day (UTC, reset at midnight by default)
YESTERDAY = TODAY - dt.timedelta(days=1)
HOSTILE = 'x<img src=x onerror="window.__xss=1">'
HOSTILE_GROUP = '<img src=x onerror="window.__xss=2">Ward'
# name: {day: requests}; tokens are ten per request
PEOPLE: dict[str, dict[dt.date, int]] = {
    "ui.alice": {YESTERDAY: 3, TODAY: 2},
    "ui.bob": {TODAY: 4},
    "ui.mallory": {TODAY: 1},  # renamed to HOSTILE below, and refused twice today
}


def _db(web: FakeWeb) -> sqlite3.Connection:
    return sqlite3.connect(web.data_dir / "deepseekd.db", timeout=30)


def _seed(web: FakeWeb) -> None:
    conn = _db(web)
    try:
        with conn:
            for name, days in PEOPLE.items():
                for day, requests in days.items():
                    conn.execute(
                        "INSERT INTO quota_usage (user_id, day, requests, tokens, reasoning_tokens)"
                        " SELECT id, ?, ?, ?, 0 FROM users WHERE name = ?",
                        (day.isoformat(), requests, requests * 10, name))
            # A name and a group no form would take (a hostile directory): shown as text.
            conn.execute("UPDATE users SET name = ?, groups = ? WHERE name = 'ui.mallory'",
                         (HOSTILE, HOSTILE_GROUP))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeWeb]:
    w = start_fake_web(tmp_path_factory.mktemp("console-web"), DEEPSEEKD_LORA__ENABLED="true",
                       DEEPSEEKD_LORA__MAX_ADAPTERS="2", DEEPSEEKD_LORA__MAX_LORAS="1")
    try:
        yield w
    finally:
        w.stop(timeout=30)


@pytest.fixture(scope="module")
def boss(web: FakeWeb) -> dict[str, str]:
    """An admin (with TOTP) and the people above, seeded; the hostile one refused twice."""
    [admin] = _run(add_users(web.db_url, web.data_dir, ["ui.boss"], "admin"))
    _run(add_users(web.db_url, web.data_dir, ["ui.alice", "ui.bob"]))
    [mallory] = _run(add_users(web.db_url, web.data_dir, ["ui.mallory"], daily_request_limit=0))
    _seed(web)
    for _ in range(2):  # the daily quota refuses: two `inference.refused` events today
        r = httpx.post(web.url + "/v1/chat/completions", timeout=30,
                       headers={"Authorization": f"Bearer {mallory.api_key}"},
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 429, r.text
    assert admin.password and admin.totp_uri
    return {"name": admin.name, "password": admin.password, "totp_uri": admin.totp_uri}


@pytest.fixture(scope="module")
def problems() -> list[str]:
    return []


@pytest.fixture(scope="module")
def console(browser: Browser, web: FakeWeb, boss: dict[str, str],
            problems: list[str]) -> Iterator[Page]:
    ctx = browser.new_context(base_url=web.url, viewport=DESKTOP)
    page = watch_problems(ctx.new_page(), problems)
    sign_in_admin(page, boss["name"], boss["password"], totp_now(boss["totp_uri"]))
    yield page
    ctx.close()


def _bars(page: Page, chart: str, series: str) -> dict[str, int]:
    rects = page.locator(f"#{chart} svg rect[data-series='{series}']")
    return {rects.nth(i).get_attribute("data-day") or "": int(rects.nth(i).get_attribute(
        "data-value") or 0) for i in range(rects.count())}


# --------------------------------------------------------------------------- usage


def test_requests_tokens_and_refusals_per_day_as_bars(console: Page) -> None:
    console.click("#tab-usage")
    requests = console.locator("#chart-requests svg[role=img]")
    expect(requests).to_be_visible()
    y, t = YESTERDAY.isoformat(), TODAY.isoformat()
    expect(console.locator("#chart-requests rect.bar")).to_have_count(2)
    assert _bars(console, "chart-requests", "requests") == {y: 3, t: 7}
    assert _bars(console, "chart-tokens", "tokens") == {y: 30, t: 70}
    assert _bars(console, "chart-errors", "refused") == {t: 2}
    assert _bars(console, "chart-errors", "failed") == {}
    # The taller bar is the larger number.
    heights = {d: float(console.locator(f"#chart-requests rect[data-day='{d}']")
                        .get_attribute("height") or 0) for d in (y, t)}
    assert heights[t] > heights[y] * 2
    # Text alternatives: the chart summed up in words, a title on each bar, the table.
    label = requests.get_attribute("aria-label") or ""
    assert "Requests per day" in label and "10 in all" in label and f"the most on {t}, 7" in label
    errors = console.locator("#chart-errors svg").get_attribute("aria-label") or ""
    assert "2 in all" in errors and "2 refused" in errors and "0 failed" in errors
    assert console.locator(f"#chart-requests rect[data-day='{t}'] title").text_content() == (
        f"{t}: 7 request(s)")
    console.click("#usage-days-details summary")
    row = console.locator(f"#usage-days-table tr[data-day='{t}']")
    expect(row).to_be_visible()
    assert [c.strip() for c in row.locator("th, td").all_inner_texts()] == [
        t, "7", "70", "3", "0", "2"]
    expect(console.locator("#usage-days-table tbody tr")).to_have_count(30)  # every day
    expect(console.locator("#usage-overview-summary")).to_contain_text(
        "10 request(s) and 100 token(s) by 3 user(s); 0 failed, 2 refused.")


def test_top_users_table_with_bars_and_a_hostile_name(console: Page) -> None:
    console.click("#tab-usage")
    rows = console.locator("#top-users-table tbody tr[data-user]")
    expect(rows).to_have_count(3)
    cells = [[c.strip() for c in rows.nth(i).locator("th, td").all_inner_texts()]
             for i in range(3)]
    assert cells == [["ui.alice", "5", "50", "0", "0"], ["ui.bob", "4", "40", "0", "0"],
                     [HOSTILE, "1", "10", "0", "2"]]
    widths = [float(rows.nth(i).locator("svg.hbar rect").first.get_attribute("width") or 0)
              for i in range(3)]
    assert widths == [100, 80, 20]  # a share of the most requests
    # The markup is text everywhere it shows: top users, the group table, chart and legend.
    assert console.locator("#panel-usage img").count() == 0
    assert console.evaluate("window.__xss") is None
    expect(console.locator("#usage-legend")).to_contain_text(HOSTILE_GROUP)
    group_bar = console.locator(f"#usage-chart rect[data-group='{HOSTILE_GROUP}'] title")
    assert group_bar.text_content() == f"{HOSTILE_GROUP}, {TODAY.isoformat()}: 1 request(s)"
    shoot_admin(console, "console-usage")


def test_the_group_filter_narrows_the_charts(console: Page) -> None:
    console.click("#tab-usage")
    console.select_option("#usage-group", label=HOSTILE_GROUP)
    expect(console.locator("#top-users-table tbody tr[data-user]")).to_have_count(1)
    expect(console.locator("#usage-overview-title")).to_contain_text(HOSTILE_GROUP)
    assert _bars(console, "chart-requests", "requests") == {TODAY.isoformat(): 1}
    assert console.evaluate("window.__xss") is None
    console.select_option("#usage-group", value="")
    expect(console.locator("#top-users-table tbody tr[data-user]")).to_have_count(3)


# --------------------------------------------------------------------------- LoRA


def test_lora_tab_lists_loads_refuses_and_unloads(console: Page, web: FakeWeb) -> None:
    console.click("#tab-lora")
    expect(console.locator("#panel-lora")).to_be_visible()
    expect(console.locator("#lora-table tbody")).to_contain_text("No adapters loaded.")
    # A folder that is not in the inbox: the server's message, by the field.
    console.fill("#lora-name", "radiology")
    console.fill("#lora-path", "no-such-folder")
    console.click("#lora-load")
    path_error = console.locator("#lora-path-error")
    expect(path_error).to_be_visible()
    expect(path_error).to_contain_text("'no-such-folder' is not a folder in")
    expect(console.locator("#lora-path")).to_have_attribute("aria-invalid", "true")
    shoot_admin(console, "console-lora-error")

    make_adapter(web.data_dir / "lora-inbox" / "radiology-v3")
    console.fill("#lora-path", "radiology-v3")
    console.click("#lora-load")
    expect(console.locator("#lora-msg")).to_contain_text("Loaded radiology (rank 8")
    expect(path_error).to_be_hidden()
    row = console.locator('#lora-table tr[data-adapter="radiology"]')
    expect(row).to_be_visible()
    cells = [c.strip() for c in row.locator("th, td").all_inner_texts()]
    assert cells[:2] == ["radiology", "fake-model"] and cells[3] == "yes" and cells[5] == "everyone"
    assert re.fullmatch(r"[0-9a-f]{12}…", cells[2]), cells
    models = httpx.get(web.url + "/v1/models", timeout=10,
                       headers={"Authorization": f"Bearer {_api_key(web)}"}).json()
    assert "fake-model:radiology" in [m["id"] for m in models["data"]]

    # The same name again: refused, by the name field.
    console.fill("#lora-name", "radiology")
    console.fill("#lora-path", "radiology-v3")
    console.click("#lora-load")
    expect(console.locator("#lora-name-error")).to_contain_text("unload it first")
    shoot_admin(console, "console-lora")

    unload = row.get_by_role("button", name="Unload radiology")
    unload.click()
    expect(console.locator("#confirm")).to_be_visible()
    expect(console.locator("#confirm-text")).to_contain_text("radiology")
    console.click("#confirm-cancel")
    expect(row).to_be_visible()
    unload.click()
    console.click("#confirm-ok")
    expect(console.locator("#lora-msg")).to_have_text("Unloaded radiology.")
    expect(row).to_have_count(0)


_KEYS: dict[str, str] = {}


def _api_key(web: FakeWeb) -> str:
    if "key" not in _KEYS:
        [u] = _run(add_users(web.db_url, web.data_dir, ["ui.reader"]))
        _KEYS["key"] = u.api_key
    return _KEYS["key"]


# --------------------------------------------------------------------------- settings


def test_settings_show_labels_help_and_the_config_name(console: Page) -> None:
    console.click("#tab-settings")
    form = console.locator('form[data-key="quota.daily_requests"]')
    expect(form.locator("label")).to_have_text("Daily requests per user")
    expect(form.locator(".setting-key")).to_have_text("quota.daily_requests")
    expect(form).to_contain_text("How many questions a user may ask a day")
    # The label names the field (what a screen reader says).
    expect(console.get_by_label("Daily requests per user", exact=True)).to_have_attribute(
        "id", "set-quota-daily_requests")
    expect(console.get_by_label("Keep chat history for (days)", exact=True)).to_be_visible()
    expect(console.get_by_label("Log detail", exact=True)).to_be_visible()
    expect(form.get_by_role("button", name="Save Daily requests per user")).to_be_visible()
    shoot_admin(console, "console-settings")


# --------------------------------------------------------------------------- master key


def test_key_version_and_age_in_the_header_then_a_rotation(console: Page, web: FakeWeb,
                                                           boss: dict[str, str]) -> None:
    line = console.locator("#key-status")
    expect(line).to_be_visible()
    expect(line).to_contain_text("Master key v1")
    expect(line).to_contain_text("never rotated")
    expect(line).not_to_have_class(re.compile("overdue"))
    # 100 days old, over the default rotation period (90 days): a warning, in every tab.
    conn = _db(web)
    try:
        with conn:
            conn.execute("UPDATE key_checks SET created_at = ? WHERE version = 1",
                         (time.time() - 100 * 86400,))
    finally:
        conn.close()
    console.click("#tab-engine")  # polls the status now
    expect(line).to_contain_text("100 days old", timeout=10_000)
    expect(line).to_have_class(re.compile("overdue"))
    expect(line).to_contain_text("rotation overdue (every 90 days)")
    console.click("#tab-keys")
    expect(console.locator("#key-version")).to_have_text("v1")
    expect(console.locator("#key-rotated")).to_have_text("never")
    expect(console.locator("#key-due")).to_contain_text("overdue")
    shoot_admin(console, "console-keys-overdue")

    console.click("#rotate")
    console.click("#confirm-ok")
    expect(console.locator("#rotate-result")).to_contain_text("Current version: v2")
    expect(line).to_contain_text("Master key v2", timeout=10_000)
    expect(line).to_contain_text("less than a day old")
    expect(line).to_contain_text("last rotated")
    expect(line).not_to_have_class(re.compile("overdue"))
    expect(console.locator("#key-version")).to_have_text("v2")
    expect(console.locator("#key-due")).to_contain_text("Every 90 days; next about")
    expect(console.locator("#key-prepared")).to_have_text("none")
    # The one daemon on this database, as it reports itself: wraps with v2 after its sync.
    rows = console.locator("#replicas-table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first.locator("td").nth(1)).to_have_text(str(web.data_dir.resolve() / "keys"))
    expect(rows.first.locator("td").nth(3)).to_have_text("v2", timeout=15_000)
    console.click("#tab-users")
    expect(line).to_be_visible()  # not only in the Keys tab
    shoot_admin(console, "console-keys")


def test_no_csp_violations_or_page_errors(console: Page, problems: list[str]) -> None:
    assert console.evaluate("window.__xss") is None
    assert problems == [], problems
