"""The chat page's conversation list in a real browser, over the FakeEngine in echo mode
(`fake_web`): groups by last update with headings, pin (kept across a reload), the actions
menu from the keyboard, search over the user's own history, XSS titles and snippets.

Screenshots go to test-artifacts/web/chat-list-*.png (desktop and 390 px wide)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from tests.e2e.test_web_chat import Console, login, send
from tests.e2e.web_fixtures import (  # noqa: F401  (fixtures)
    DESKTOP,
    PHONE,
    FakeWeb,
    browser,
    fake_web,
    shot,
)

XSS = '<img src=x onerror="window.__xss=1">'


def set_updated(web: FakeWeb, conversation_id: str, days_ago: float) -> None:
    """Move a conversation's last update back, behind the daemon's back."""
    path = web.db_url.split(":///", 1)[1]
    conn = sqlite3.connect(path, timeout=10)
    try:
        conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?",
                     (time.time() - days_ago * 86400, conversation_id))
        conn.commit()
    finally:
        conn.close()


def listed(page: Any, web: FakeWeb) -> list[dict[str, Any]]:
    return page.request.get(web.url + "/v1/conversations").json()["data"]


def headings(page: Any) -> list[str]:
    return [h.strip() for h in page.locator(".conv-group-heading").all_text_contents()]


def new_chat_with(page: Any, text: str) -> None:
    page.click("#new-chat")
    send(page, text, timeout_ms=30_000)


def test_groups_pin_menu_and_search(browser: Any, fake_web: FakeWeb) -> None:
    password = fake_web.add_user("list.nurse")
    other = fake_web.add_user("list.other")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        # Another user's conversation with the same word never shows in the search.
        other_ctx = browser.new_context(viewport=DESKTOP)
        try:
            other_page = other_ctx.new_page()
            login(other_page, fake_web.url, "list.other", other)
            send(other_page, "zebrafish belongs to someone else", timeout_ms=30_000)
        finally:
            other_ctx.close()

        page = ctx.new_page()
        console = Console(page)
        login(page, fake_web.url, "list.nurse", password)
        send(page, "old discharge letter", timeout_ms=30_000)
        new_chat_with(page, "last week rota")
        new_chat_with(page, XSS + " title")
        send(page, "patient notes mention zebrafish allergy", timeout_ms=30_000)
        new_chat_with(page, "handover for today")
        convs = {c["title"]: c["id"] for c in listed(page, fake_web)}
        assert len(convs) == 4
        set_updated(fake_web, convs["old discharge letter"], 40)
        set_updated(fake_web, convs["last week rota"], 3)
        page.reload()
        page.wait_for_selector(".conv-group-heading")
        assert headings(page) == ["Today", "Previous 7 days", "Older"]
        older = page.locator(".conv-group", has_text="Older")
        assert older.locator(".conv-title").all_text_contents() == ["old discharge letter"]
        # The XSS title is text, whole, in the tooltip too.
        xss_item = page.locator(f".conv-item[data-id='{convs[XSS + ' title']}']")
        assert xss_item.locator(".conv-title").text_content() == XSS + " title"
        assert xss_item.locator(".conv-open").get_attribute("title") == XSS + " title"
        shot(page, "list-groups-desktop")

        # The menu from the keyboard: focus its button, Enter opens it on its first item
        # (Pin), Escape closes it and gives the focus back; Enter on Pin pins.
        old_item = page.locator(f".conv-item[data-id='{convs['old discharge letter']}']")
        button = old_item.locator(".conv-menu-button")
        assert button.get_attribute("aria-haspopup") == "menu"
        button.focus()
        page.keyboard.press("Enter")
        assert button.get_attribute("aria-expanded") == "true"
        assert page.evaluate("document.activeElement.textContent") == "Pin"
        page.keyboard.press("ArrowDown")
        assert page.evaluate("document.activeElement.textContent") == "Rename"
        page.keyboard.press("Escape")
        assert button.get_attribute("aria-expanded") == "false"
        assert old_item.locator(".conv-menu-list").is_hidden()
        assert page.evaluate("document.activeElement.classList.contains('conv-menu-button')")
        page.keyboard.press("Enter")
        page.keyboard.press("Enter")  # Pin
        page.wait_for_function("() => document.querySelector('.conv-group-heading')"
                               "?.textContent === 'Pinned'")
        assert headings(page)[0] == "Pinned"
        page.reload()
        page.wait_for_selector(".conv-group-heading")
        assert headings(page) == ["Pinned", "Today", "Previous 7 days"]
        pinned = page.locator(".conv-group", has_text="Pinned").locator(".conv-title")
        assert pinned.all_text_contents() == ["old discharge letter"]
        assert [c["pinned"] for c in listed(page, fake_web)][0] is True

        # Search: a word of the second message (and its echoed answer), the snippet marks it.
        page.fill("#conv-search", "ZEBRAFISH")
        page.wait_for_selector("#conv-search-status:has-text('1 result')")
        results = page.locator(".conv-results .conv-item")
        assert results.count() == 1
        assert results.first.get_attribute("data-id") == convs[XSS + " title"]
        assert results.first.locator("mark").text_content().lower() == "zebrafish"
        assert page.locator(".conv-group-heading").count() == 0
        shot(page, "list-search-desktop")
        page.set_viewport_size(PHONE)
        if not page.is_visible("#conv-search"):
            page.click("#sidebar-toggle")
        shot(page, "list-search-phone")
        page.set_viewport_size(DESKTOP)

        # An XSS snippet stays text.
        page.fill("#conv-search", "onerror")
        page.wait_for_selector(".conv-results mark:text-is('onerror')")
        assert page.text_content("#conv-search-status") == "1 result"
        snippet = page.locator(".conv-results .conv-snippet").first.text_content()
        assert "<img" in snippet and page.locator(".conv-groups img").count() == 0
        assert page.evaluate("window.__xss") is None

        # Escape clears: the grouped list is back.
        page.press("#conv-search", "Escape")
        page.wait_for_selector(".conv-group-heading")
        assert page.input_value("#conv-search") == ""
        assert headings(page) == ["Pinned", "Today", "Previous 7 days"]
        page.set_viewport_size(PHONE)
        if not page.is_visible(".conv-group-heading"):
            page.click("#sidebar-toggle")
        shot(page, "list-groups-phone")

        # A result deleted from the search results: the count follows.
        page.set_viewport_size(DESKTOP)
        page.fill("#conv-search", "onerror")
        page.wait_for_selector("#conv-search-status:text-is('1 result')")
        page.once("dialog", lambda d: d.accept())
        item = page.locator(".conv-results .conv-item").first
        item.locator(".conv-menu-button").click()
        item.locator(".conv-delete").click()
        page.wait_for_selector("#conv-search-status:text-is('0 results')")
        assert page.locator(".conv-results .conv-item").count() == 0
        assert not console.csp_violations(), console.messages
        assert not console.page_errors(), console.messages
    finally:
        ctx.close()
