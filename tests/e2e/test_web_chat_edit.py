"""Editing a sent message, regenerating the last answer and the automatic title, in a real
browser over the FakeEngine in echo mode (the answer repeats the question; the "title" the
model writes repeats what the title prompt showed it). The later turns are replaced, not
branched: after a reload only the new ones are there.

Screenshots: test-artifacts/web/chat-edit-*.png (desktop and 390 px wide)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_web_chat import Console, login, send, wait_idle
from tests.e2e.web_fixtures import (  # noqa: F401  (fixtures)
    DESKTOP,
    PHONE,
    FakeWeb,
    browser,
    one_more_send,
    shot,
    start_fake_web,
)

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


@pytest.fixture(scope="module")
def edit_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeWeb]:
    web = start_fake_web(
        tmp_path_factory.mktemp("edit-web"),
        DEEPSEEKD_WEB__AUTO_TITLE="true",
        DEEPSEEKD_TEST_FAKE_MAX_MODEL_LEN="512",
        DEEPSEEKD_TEST_FAKE_TOKEN_DELAY="0.02",
    )
    try:
        yield web
    finally:
        web.stop(timeout=30)


def texts(page: Any, role: str) -> list[str]:
    sel = ".msg-user .msg-body" if role == "user" else ".msg-assistant .answer"
    return [t.strip() for t in page.locator(sel).all_text_contents()]


def stored(page: Any, web: FakeWeb) -> dict[str, Any]:
    listed = page.request.get(web.url + "/v1/conversations").json()["data"]
    [conv] = listed
    return page.request.get(f"{web.url}/v1/conversations/{conv['id']}").json()


def edit_buttons_ready(page: Any, n: int) -> None:
    page.wait_for_function(
        f"() => document.querySelectorAll('.msg-user .edit-message:not([disabled])').length"
        f" === {n} && document.querySelectorAll('.regenerate').length === 1"
    )


def no_overflow(page: Any) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"page is {overflow}px wider than the screen"


@pytest.mark.parametrize("size", ["desktop", "390"])
def test_edit_a_middle_message_and_regenerate(browser: Any, edit_web: FakeWeb, size: str) -> None:
    name = f"edit.nurse.{size}"
    password = edit_web.add_user(name)
    ctx = browser.new_context(viewport=DESKTOP if size == "desktop" else PHONE)
    try:
        page = ctx.new_page()
        console = Console(page)
        login(page, edit_web.url, name, password)
        for q in ("alpha one", "bravo two", "charlie three"):
            send(page, q, timeout_ms=30_000)
        edit_buttons_ready(page, 3)
        # Only the last answer can be regenerated.
        last = page.locator(".msg-assistant").last
        assert last.locator(".regenerate").count() == 1
        old_ids = [t["id"] for t in stored(page, edit_web)["turns"]]

        second = page.locator(".msg-user").nth(1)
        second.locator(".edit-message").click()
        box = second.locator("textarea.edit-input")
        assert box.input_value() == "bravo two"
        assert second.locator(".edit-note").text_content() == (
            "Later messages in this chat will be replaced."
        )
        # While the form is open, nothing else can be edited.
        assert page.locator(".msg-user .edit-message:not([disabled])").count() == 0
        box.fill("bravo edited")
        shot(page, f"edit-form{'' if size == 'desktop' else '-390'}")
        if size == "390":
            no_overflow(page)
        with one_more_send(page):
            second.locator(".edit-save").click()
        assert texts(page, "user") == ["alpha one", "bravo edited"]
        assert texts(page, "assistant") == ["alpha one", "bravo edited"]
        conv = stored(page, edit_web)
        assert [t["seq"] for t in conv["turns"]] == [1, 2] and "incomplete" not in conv
        assert conv["turns"][0]["id"] == old_ids[0] and conv["turns"][1]["id"] not in old_ids
        edit_buttons_ready(page, 2)

        # After a reload the later turns are gone for good.
        page.reload()
        page.wait_for_selector("#chat-view:not([hidden])")
        if size == "390":
            page.click("#sidebar-toggle")
        page.wait_for_selector(".conv-item")
        page.locator(".conv-open").first.click()
        page.wait_for_selector(".msg-assistant")
        assert texts(page, "user") == ["alpha one", "bravo edited"]
        assert texts(page, "assistant") == ["alpha one", "bravo edited"]
        edit_buttons_ready(page, 2)

        # Regenerate the last answer: a new stored turn in its place.
        last_id = stored(page, edit_web)["turns"][-1]["id"]
        with one_more_send(page):
            page.locator(".msg-assistant").last.locator(".regenerate").click()
        wait_idle(page)
        assert texts(page, "user") == ["alpha one", "bravo edited"]
        assert texts(page, "assistant") == ["alpha one", "bravo edited"]
        conv = stored(page, edit_web)
        assert [t["seq"] for t in conv["turns"]] == [1, 2]
        assert conv["turns"][1]["id"] != last_id and "incomplete" not in conv
        edit_buttons_ready(page, 2)
        shot(page, f"edit-done{'' if size == 'desktop' else '-390'}")
        assert console.page_errors() == [] and console.csp_violations() == []
    finally:
        ctx.close()


def test_edit_buttons_wait_for_the_answer_and_work_from_the_keyboard(
    browser: Any, edit_web: FakeWeb
) -> None:
    password = edit_web.add_user("edit.keys")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        login(page, edit_web.url, "edit.keys", password)
        send(page, "first note", timeout_ms=30_000)
        edit_buttons_ready(page, 1)
        # While an answer streams, nothing can be edited or regenerated.
        page.fill("#composer-input", " ".join(f"w{k}" for k in range(60)))
        page.press("#composer-input", "Enter")
        page.wait_for_function("() => document.body.dataset.busy === 'true'")
        assert (
            page.locator(".edit-message:not([disabled]), .regenerate:not([disabled])").count() == 0
        )
        wait_idle(page, 30_000)
        edit_buttons_ready(page, 2)

        edit = page.locator(".msg-user").first.locator(".edit-message")
        assert edit.get_attribute("aria-label") == "Edit this message and send it again"
        edit.focus()
        page.keyboard.press("Enter")
        box = page.locator("textarea.edit-input")
        assert page.evaluate("document.activeElement.classList.contains('edit-input')")
        # Escape cancels and gives the focus back to the Edit button.
        page.keyboard.press("Escape")
        assert box.count() == 0
        assert page.evaluate("document.activeElement.classList.contains('edit-message')")
        page.keyboard.press("Enter")
        page.keyboard.press("Control+a")
        page.keyboard.type(XSS)
        with one_more_send(page):
            page.keyboard.press("Control+Enter")
        # The edited text is text: shown whole, never run; the later turn is gone.
        assert texts(page, "user") == [XSS]
        assert texts(page, "assistant") == [XSS]
        assert page.evaluate("window.__xss") is None
        assert page.locator("#messages img, #messages script").count() == 0
        conv = stored(page, edit_web)
        assert len(conv["turns"]) == 1 and conv["turns"][0]["messages"][-1]["content"] == XSS
    finally:
        ctx.close()


@pytest.mark.parametrize("size", ["desktop", "390"])
def test_automatic_title_shows_and_stays_text(browser: Any, edit_web: FakeWeb, size: str) -> None:
    name = f"title.nurse.{size}"
    password = edit_web.add_user(name)
    ctx = browser.new_context(viewport=DESKTOP if size == "desktop" else PHONE)
    try:
        page = ctx.new_page()
        login(page, edit_web.url, name, password)
        send(page, f"{XSS} dosing", timeout_ms=30_000)
        # The model's title (the echo of the title prompt) replaces the first-message
        # title within a few seconds, in the header and in the list.
        page.wait_for_function(
            "() => document.getElementById('chat-title').textContent.startsWith('Question:')",
            timeout=10_000,
        )
        title = page.text_content("#chat-title") or ""
        assert "<img" in title and len(title) <= 80
        if size == "390":
            page.click("#sidebar-toggle")
        item = page.locator(".conv-item .conv-title").first
        assert item.text_content() == title
        assert page.evaluate("window.__xss") is None
        assert page.locator("#conv-list img, #conv-list script, #chat-title img").count() == 0
        listed = page.request.get(edit_web.url + "/v1/conversations").json()["data"]
        assert [c["title"] for c in listed] == [title]
        shot(page, f"edit-auto-title{'' if size == 'desktop' else '-390'}")
        if size == "390":
            no_overflow(page)
    finally:
        ctx.close()
