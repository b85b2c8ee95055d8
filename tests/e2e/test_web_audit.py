"""The auditor view's audit log in a real Chromium against the real app (over the FakeEngine,
as a process): the newest events first, a detail panel with every field of an event (the
prompt and answer HMACs and the request id of a chat, never its text) opened by mouse or
keyboard, the outcome filter, and a CSV export that downloads exactly the filtered events
and is itself audited. Screenshots go to test-artifacts/web/admin-audit-*.png."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from deepseekd.services.audit_export import COLUMNS
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
    watch_problems,
)
from tests.support.store_setup import add_users

PROMPT = "Bed 12: potassium 6.1, what next?"
HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(scope="module")
def world(fake_web: FakeWeb) -> dict[str, Any]:
    """A nurse who chatted twice, refused sign-ins, and an auditor (with the password)."""
    nurse, auditor = _run(add_users(fake_web.db_url, fake_web.data_dir, ["ui.nurse"])) + _run(
        add_users(fake_web.db_url, fake_web.data_dir, ["ui.audit"], "auditor"))
    auth = {"Authorization": f"Bearer {nurse.api_key}"}
    request_ids = []
    for _ in range(2):
        r = httpx.post(fake_web.url + "/v1/chat/completions", headers=auth, timeout=30, json={
            "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4})
        assert r.status_code == 200, r.text
        request_ids.append(r.headers["X-Request-Id"])
    for _ in range(4):  # refused sign-ins (one short of a lockout): a page's worth of events
        refused = httpx.post(fake_web.url + "/auth/login", timeout=30,
                             json={"username": "ui.nurse", "password": "not the password"})
        assert refused.status_code == 401
    return {"auditor": auditor, "request_ids": request_ids}


@pytest.fixture(scope="module")
def page(browser: Browser, fake_web: FakeWeb, world: dict[str, Any]) -> Iterator[Page]:
    ctx = browser.new_context(base_url=fake_web.url, viewport=DESKTOP, accept_downloads=True)
    problems: list[str] = []
    pg = watch_problems(ctx.new_page(), problems)
    sign_in_admin(pg, "ui.audit", world["auditor"].password)  # auditors give no code
    settled(pg)
    yield pg
    assert problems == [], problems  # no CSP refusal, no script error
    ctx.close()


def settled(page: Page) -> None:
    expect(page.locator("#audit-table")).to_have_attribute("aria-busy", "false")


def apply(page: Page, **fields: str) -> None:
    page.click("#f-clear")
    settled(page)
    for name, value in fields.items():
        if name in ("outcome", "order", "limit"):
            page.select_option(f"#f-{name}", value)
        else:
            page.fill(f"#f-{name}", value)
    page.click("#f-apply")
    settled(page)


def ids(page: Page) -> list[int]:
    return [int(x) for x in page.locator("#audit-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.id).filter(Boolean)")]


def api(page: Page, query: str) -> list[dict[str, Any]]:
    """The events API, with the page's own session cookie."""
    resp = page.request.get(f"/audit/api/events?{query}")
    assert resp.ok, resp.text()
    return resp.json()["events"]




def test_the_newest_events_come_first(page: Page) -> None:
    expect(page.locator("#f-order")).to_have_value("desc")
    shown = ids(page)
    assert len(shown) > 5 and shown == sorted(shown, reverse=True)
    newest = api(page, "order=desc&limit=1")[0]
    assert shown[0] == newest["id"]
    expect(page.locator("#audit-page")).to_contain_text("newest first")
    # Paging goes back in time.
    apply(page, limit="10")
    first = ids(page)
    page.click("#audit-next")
    settled(page)
    older = ids(page)
    assert older and max(older) < min(first)
    # Oldest first is still there for whoever wants it.
    apply(page, order="asc")
    shown = ids(page)
    assert shown[0] == 1 and shown == sorted(shown)


def test_an_event_opens_with_every_field(page: Page, world: dict[str, Any]) -> None:
    apply(page, action="inference", actor="ui.nurse")
    rows = page.locator("#audit-table tbody tr[data-id]")
    expect(rows).to_have_count(2)
    newest = api(page, "action=inference&order=desc&limit=1")[0]
    rows.first.click()
    panel = page.locator("#audit-detail")
    expect(panel).to_be_visible()
    expect(panel).to_be_focused()
    field = lambda name: panel.locator(f'dd[data-field="{name}"]')  # noqa: E731
    expect(page.locator("#audit-detail-title")).to_have_text(f"Event #{newest['id']}: inference")
    expect(field("request_id")).to_have_text(world["request_ids"][-1])
    expect(field("prompt_hmac")).to_have_text(newest["prompt_hmac"])
    expect(field("answer_hmac")).to_have_text(newest["answer_hmac"])
    assert HEX64.match(field("prompt_hmac").inner_text())
    expect(field("client")).to_have_text(newest["client"])
    expect(field("hash")).to_have_text(newest["hash"])
    expect(field("prev_hash")).to_have_text(newest["prev_hash"])
    expect(field("prompt_tokens")).to_have_text(str(newest["prompt_tokens"]))
    expect(field("at").locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-"))
    assert panel.locator("dt").count() == 18
    assert PROMPT not in page.content()  # an HMAC of the question, never the question
    shoot(page, "audit-detail")
    page.click("#audit-detail-close")
    expect(panel).to_be_hidden()
    expect(rows.first).to_be_focused()  # back where the auditor was

    # The keyboard alone: Tab to a row, arrow down, Enter opens, Escape closes.
    rows.first.focus()
    page.keyboard.press("ArrowDown")
    expect(rows.nth(1)).to_be_focused()
    page.keyboard.press("Enter")
    expect(panel).to_be_visible()
    expect(field("request_id")).to_have_text(world["request_ids"][0])
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(rows.nth(1)).to_be_focused()


def test_outcome_filter(page: Page) -> None:
    apply(page, outcome="denied")
    rows = page.locator("#audit-table tbody tr[data-id]")
    expect(rows.first).to_be_visible()
    outcomes = page.locator("#audit-table tbody tr[data-id] td:nth-child(7)").all_inner_texts()
    assert outcomes and set(outcomes) == {"denied"}
    assert ids(page) == [e["id"] for e in api(page, "outcome=denied&order=desc")]
    expect(rows.filter(has_text="web.login").first).to_be_visible()  # the refused sign-in
    apply(page, outcome="error")
    expect(page.locator("#audit-table tbody")).to_contain_text("No events match")


def test_csv_export_downloads_the_filter(page: Page) -> None:
    apply(page, action="inference", outcome="ok")
    link = page.locator("#export-csv")
    href = link.get_attribute("href") or ""
    assert "action=inference" in href and "outcome=ok" in href and "format=csv" in href
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename.startswith("deepseekd-audit-")
    assert download.suggested_filename.endswith(".csv")
    path = download.path()
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS)
    wanted = api(page, "action=inference&outcome=ok")
    assert [int(r["id"]) for r in rows] == [e["id"] for e in wanted] and len(rows) == 2
    assert {r["action"] for r in rows} == {"inference"} and {r["actor"] for r in rows} == {
        "ui.nurse"}
    assert all(HEX64.match(r["prompt_hmac"]) for r in rows)
    assert PROMPT not in open(path, encoding="utf-8").read()
    # The export was recorded, with what it was asked for.
    [record] = api(page, "action=audit.export")
    assert record["actor"] == "ui.audit" and record["role"] == "auditor"
    assert json.loads(record["detail"]) == {"format": "csv", "action": "inference",
                                            "outcome": "ok"}
    # And it shows in the view like any event: newest first, the export on top, its detail
    # laid out as JSON.
    apply(page)
    top = page.locator("#audit-table tbody tr[data-id]").first
    expect(top).to_have_attribute("data-action", "audit.export")
    shoot(page, "audit-log")
    top.click()
    detail = page.locator('#audit-detail dd[data-field="detail"] pre')
    expect(detail).to_contain_text('"format": "csv"')
    page.click("#audit-detail-close")


def test_other_exports_follow_the_filter(page: Page) -> None:
    apply(page, actor="ui.nurse")
    for link, fmt in (("#export-jsonl", "jsonl"), ("#export-fhir", "fhir")):
        href = page.locator(link).get_attribute("href") or ""
        assert f"format={fmt}" in href and "actor=ui.nurse" in href
    with page.expect_download() as info:
        page.click("#export-fhir")
    bundle = json.loads(open(info.value.path(), encoding="utf-8").read())
    assert bundle["resourceType"] == "Bundle" and bundle["entry"]
    assert {e["resource"]["agent"][0]["who"]["display"] for e in bundle["entry"]} == {"ui.nurse"}
