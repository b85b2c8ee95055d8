"""The README's screenshots (tests/e2e/screenshots/), made the way a user sees the pages:
the chat page in its light and dark theme with a realistic answer (reasoning, a table, a
code block), the console's Users tab and its Usage tab over two weeks of seeded usage.

The daemon is the real app over the FakeEngine answering ANSWER to every question (a
reasoning model), so the pictures are the same on every run. The test checks what the
pictures are meant to show, then saves them as test-artifacts/web/readme-NAME.png; to
refresh the README's copies, copy those to tests/e2e/screenshots/NAME.png
(tests/unit/test_readme_screenshots.py checks that every picture the README shows is there).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e import web_fixtures
from tests.e2e.web_fixtures import (
    ARTIFACTS,
    FakeWeb,
    _run,
    send,
    sign_in_admin,
    sign_in_chat,
    start_fake_web,
    totp_now,
)
from tests.support.store_setup import add_users

ANSWER = """For a healthy adult without renal or hepatic impairment:

| Drug | Single dose | Interval | Maximum per 24 h |
| --- | ---: | --- | ---: |
| Paracetamol | 1 g | every 4–6 h | 4 g |
| Ibuprofen | 400 mg | every 6–8 h | 1.2 g (OTC) |

Check **renal function** before ibuprofen, and halve the paracetamol maximum for patients
under 50 kg. As a dosing check in the ward script:

```python
def max_paracetamol_g(weight_kg: float) -> float:
    return 4.0 if weight_kg >= 50 else 60 * weight_kg / 1000
```
"""
QUESTION = "Adult doses of paracetamol and ibuprofen, as a table, please."
EARLIER = ("Discharge letter for bed 12", "Explain a CT scan to a patient")
WARD = {  # user: (groups, requests on each of the last 14 days)
    "dr.okafor": ("Cardiology", [12, 9, 14, 11, 0, 0, 13, 15, 10, 12, 16, 0, 0, 14]),
    "n.lindqvist": ("Cardiology", [6, 8, 5, 7, 0, 0, 9, 6, 7, 8, 5, 0, 0, 9]),
    "dr.haddad": ("Radiology", [4, 3, 6, 5, 2, 0, 4, 7, 3, 5, 6, 1, 0, 8]),
    "p.moreau": ("Pharmacy", [3, 2, 2, 4, 0, 0, 3, 2, 4, 3, 2, 0, 0, 5]),
}
DESKTOP = {"width": 1280, "height": 800}
chromium = web_fixtures.browser  # the module's Chromium (a fixture, under this name here)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeWeb]:
    tmp = tmp_path_factory.mktemp("screens")
    answer = tmp / "answer.md"
    answer.write_text(ANSWER, encoding="utf-8")
    w = start_fake_web(
        tmp,
        DEEPSEEKD_TEST_FAKE_SCRIPT_FILE=str(answer),
        DEEPSEEKD_TEST_FAKE_THINK="12",
        DEEPSEEKD_TEST_FAKE_MAX_MODEL_LEN="8192",
        DEEPSEEKD_TEST_FAKE_TOKEN_DELAY="0.002",
    )
    try:
        yield w
    finally:
        w.stop(timeout=30)


def _seed_usage(web: FakeWeb) -> None:
    today = dt.datetime.now(dt.UTC).date()
    conn = sqlite3.connect(web.data_dir / "deepseekd.db", timeout=30)
    try:
        with conn:
            for name, (groups, days) in WARD.items():
                conn.execute("UPDATE users SET groups = ? WHERE name = ?", (groups, name))
                for back, requests in enumerate(reversed(days)):
                    day = today - dt.timedelta(days=back)
                    conn.execute(
                        "INSERT INTO quota_usage (user_id, day, requests, tokens, "
                        "reasoning_tokens) SELECT id, ?, ?, ?, ? FROM users WHERE name = ? "
                        "ON CONFLICT DO NOTHING",
                        (day.isoformat(), requests, requests * 410, requests * 60, name),
                    )
    finally:
        conn.close()


@pytest.fixture(scope="module")
def people(web: FakeWeb) -> dict[str, Any]:
    [admin] = _run(add_users(web.db_url, web.data_dir, ["it.admin"], "admin"))
    passwords = {n: web.add_user(n) for n in WARD}
    _run(add_users(web.db_url, web.data_dir, [f"staff.{i:02d}" for i in range(8)]))
    return {"admin": admin, **passwords}


def _save(page: Page, name: str) -> Path:
    path = ARTIFACTS / f"readme-{name}.png"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))  # the viewport, as a user sees it
    assert path.stat().st_size > 20_000, f"{path} looks empty"
    return path


def test_chat_page_light_and_dark(chromium: Browser, web: FakeWeb, people: dict[str, Any]) -> None:
    page = chromium.new_context(base_url=web.url, viewport=DESKTOP).new_page()
    sign_in_chat(page, "dr.okafor", people["dr.okafor"])
    for title in EARLIER:  # earlier chats in the list
        send(page, title)
        page.click("#new-chat")
    send(page, QUESTION)
    answer = page.locator(".msg-assistant").last
    expect(answer.locator("table tbody tr")).to_have_count(2)
    expect(answer.locator("pre code")).to_contain_text("def max_paracetamol_g")
    expect(answer.locator("details.reasoning summary")).to_contain_text("Reasoning")
    expect(page.locator(".conv-item")).to_have_count(3)
    page.locator("#composer-input").blur()
    page.locator("#messages").evaluate("m => { m.scrollTop = 0; }")
    page.select_option("#theme-select", "light")
    _save(page, "chat-light")
    page.select_option("#theme-select", "dark")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    _save(page, "chat-dark")
    page.context.close()


def test_console_users_and_usage(chromium: Browser, web: FakeWeb, people: dict[str, Any]) -> None:
    _seed_usage(web)
    admin = people["admin"]
    viewport = {"width": 1280, "height": 900}
    page = chromium.new_context(base_url=web.url, viewport=viewport).new_page()
    sign_in_admin(page, admin.name, admin.password, totp_now(admin.totp_uri))
    page.click("#tab-users")
    expect(page.locator("#users-table tbody tr", has_text="dr.okafor")).to_have_count(1)
    _save(page, "admin-users")
    page.click("#tab-usage")
    top = page.locator("#top-users-table tbody tr[data-user]")
    expect(top.first).to_have_attribute("data-user", "dr.okafor")  # the most requests
    page.locator("#usage-overview-summary").scroll_into_view_if_needed()
    page.wait_for_timeout(200)
    _save(page, "admin-usage")
    page.context.close()
