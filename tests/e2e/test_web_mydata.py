"""The chat page's "My data" dialog, the printable view of one conversation and the phone
header, in a real browser over the FakeEngine in echo mode (`fake_web`).

* My data: opened from the keyboard, a modal dialog (Tab stays inside, Escape closes it and
  the focus goes back); today's usage; the JSON download holds the conversations; "Delete
  all my history" says how many first, and the list is empty after a reload; "Change
  password" opens the page's form, and is not offered for a directory account.
* Print / save as PDF: the conversation alone (title, dates, every message with who and
  when, answers rendered), the chat's chrome hidden for print; page.pdf() works; a title
  and messages with markup stay text.
* Phone: at 390 px the header is one row of at most 56 px with named icon buttons; with a
  touch keyboard open (390 x 500) the message box and a 44 x 44 px Send button are in view,
  and nothing scrolls sideways.

Screenshots: test-artifacts/web/chat-mydata-*.png, chat-print-*.png, chat-phone-*.png."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

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
KEYBOARD_OPEN = {"width": 390, "height": 500}
NO_PRINT_DIALOG = "window.__printed = 0; window.print = () => { window.__printed += 1; };"


@pytest.fixture
def ctx(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    context.add_init_script(NO_PRINT_DIALOG)  # headless: count the calls instead
    try:
        yield context
    finally:
        context.close()


def sql(web: FakeWeb, statement: str, *args: Any) -> None:
    conn = sqlite3.connect(web.db_url.split(":///", 1)[1], timeout=10)
    try:
        conn.execute(statement, args)
        conn.commit()
    finally:
        conn.close()


def listed(page: Any, web: FakeWeb) -> list[dict[str, Any]]:
    return page.request.get(web.url + "/v1/conversations").json()["data"]


def new_chat_with(page: Any, text: str) -> None:
    page.click("#new-chat")
    send(page, text, timeout_ms=30_000)


def focus_in_dialog(page: Any) -> bool:
    return bool(page.evaluate("document.getElementById('mydata').contains(document.activeElement)"))


def open_with_keyboard(page: Any) -> None:
    page.focus("#mydata-open")
    page.keyboard.press("Enter")
    page.wait_for_selector("#mydata[open]")
    page.wait_for_function("() => document.getElementById('mydata-count').textContent"
                           ".startsWith('You have')")


def test_my_data_usage_export_and_delete_all(ctx: Any, fake_web: FakeWeb) -> None:
    password = fake_web.add_user("mydata.nurse", daily_request_limit=40)
    other = fake_web.add_user("mydata.other")
    page = ctx.new_page()
    console = Console(page)
    login(page, fake_web.url, "mydata.other", other)
    send(page, "not the nurse's", timeout_ms=30_000)
    page.click("#logout")
    login(page, fake_web.url, "mydata.nurse", password)
    send(page, "first question about dosing", timeout_ms=30_000)
    new_chat_with(page, "second question")

    # From the keyboard: a modal dialog named "My data", the focus inside it.
    open_with_keyboard(page)
    dialog = page.get_by_role("dialog", name="My data")
    assert dialog.is_visible()
    assert dialog.get_attribute("aria-modal") == "true"
    assert focus_in_dialog(page)
    usage = page.request.get(fake_web.url + "/v1/me/usage").json()
    text = page.text_content("#mydata-usage") or ""
    assert "Requests today" in text and f"{usage['requests']['used']} of 40 used" in text, text
    assert f"{usage['requests']['remaining']} left" in text and "Tokens today" in text
    assert "Resets at" in text
    assert page.text_content("#mydata-count") == "You have 2 conversations."
    assert "Signed in as mydata.nurse" in (page.text_content("#mydata-who") or "")
    assert page.is_visible("#mydata-password")  # a local account: the password is ours
    for _ in range(12):  # Tab goes round the dialog, never out of it
        page.keyboard.press("Tab")
        assert focus_in_dialog(page)
    page.keyboard.press("Shift+Tab")
    assert focus_in_dialog(page)
    shot(page, "mydata-desktop")
    page.keyboard.press("Escape")
    page.wait_for_selector("#mydata", state="hidden")
    assert page.evaluate("document.activeElement.id") == "mydata-open"

    # The JSON download holds both conversations, and not the other user's.
    open_with_keyboard(page)
    with page.expect_download() as info:
        page.click("#mydata-export")
    download = info.value
    assert download.suggested_filename == "deepseekd-export-mydata.nurse.json"
    with open(download.path(), encoding="utf-8") as f:
        exported = json.load(f)
    assert exported["user"]["name"] == "mydata.nurse"
    said = [c["messages"][0]["content"] for c in exported["conversations"]]
    assert sorted(said) == ["first question about dosing", "second question"]
    assert "not the nurse's" not in json.dumps(exported)

    # Delete all: the confirm step says how many; Cancel deletes nothing.
    page.click("#mydata-delete")
    page.wait_for_selector("#mydata-confirm:not([hidden])")
    assert (page.text_content("#mydata-confirm-text") or "").startswith(
        "Delete all 2 of your conversations? This cannot be undone.")
    assert page.text_content("#mydata-confirm-delete") == "Delete 2 conversations"
    assert page.evaluate("document.activeElement.id") == "mydata-confirm-cancel"
    shot(page, "mydata-confirm-desktop")
    page.click("#mydata-confirm-cancel")
    assert page.is_hidden("#mydata-confirm") and len(listed(page, fake_web)) == 2
    page.click("#mydata-delete")
    page.click("#mydata-confirm-delete")
    page.wait_for_function("() => document.getElementById('mydata-status').textContent"
                           " === 'Deleted 2 conversations.'")
    assert page.text_content("#mydata-count") == "You have no conversations."
    assert page.is_disabled("#mydata-delete")
    page.keyboard.press("Escape")
    page.wait_for_selector("#conv-empty:not([hidden])")
    assert page.locator(".conv-item").count() == 0
    assert page.text_content("#chat-title") == "New chat"
    page.reload()
    page.wait_for_selector("#chat-view:not([hidden])")
    page.wait_for_selector("#conv-empty:not([hidden])")
    assert page.locator(".conv-item").count() == 0 and listed(page, fake_web) == []
    # The usage and the account stay: the quota still counts both questions, and a new
    # chat still works.
    assert page.request.get(fake_web.url + "/v1/me/usage").json()["requests"] == \
        usage["requests"]
    send(page, "a fresh start", timeout_ms=30_000)
    assert len(listed(page, fake_web)) == 1

    # "Change password" opens the page's own form; Cancel comes back to the chat.
    open_with_keyboard(page)
    page.click("#mydata-password")
    page.wait_for_selector("#password-view:not([hidden])")
    assert page.is_hidden("#mydata")
    assert page.evaluate("document.activeElement.id") == "password-current"
    page.click("#password-cancel")
    page.wait_for_selector("#chat-view:not([hidden])")
    assert not console.csp_violations(), console.messages
    assert not console.page_errors(), console.messages


def test_a_directory_account_is_not_offered_a_password_change(ctx: Any,
                                                              fake_web: FakeWeb) -> None:
    password = fake_web.add_user("mydata.ldap")
    page = ctx.new_page()
    login(page, fake_web.url, "mydata.ldap", password)
    sql(fake_web, "UPDATE users SET source = 'ldap' WHERE name = ?", "mydata.ldap")
    open_with_keyboard(page)
    assert page.text_content("#mydata-count") == "You have no conversations."
    assert page.is_disabled("#mydata-delete")
    assert page.is_hidden("#mydata-password")
    note = page.text_content("#mydata-password-note") or ""
    assert "directory" in note and "change it there" in note, note
    page.click("#mydata-close")
    page.wait_for_selector("#mydata", state="hidden")
    assert page.evaluate("document.activeElement.id") == "mydata-open"


def test_print_view_of_one_conversation(ctx: Any, fake_web: FakeWeb) -> None:
    """Title, dates, every message with its role and time, the answer's Markdown rendered;
    for print only the view; markup in the title and the messages stays text."""
    password = fake_web.add_user("print.nurse")
    page = ctx.new_page()
    console = Console(page)
    login(page, fake_web.url, "print.nurse", password)
    send(page, f"**Dose** check {XSS}", timeout_ms=30_000)
    send(page, "and the *second* part", timeout_ms=30_000)
    [conv] = listed(page, fake_web)
    resp = page.request.patch(f"{fake_web.url}/v1/conversations/{conv['id']}",
                              data={"title": f"Ward 3 {XSS}"},
                              headers={"X-CSRF-Token": page.evaluate(
                                  "fetch('/auth/session').then(r => r.json())"
                                  ".then(s => s.csrf_token)")})
    assert resp.ok, resp.text()
    page.reload()
    page.wait_for_selector(".conv-item .conv-menu-button")

    page.click(".conv-item .conv-menu-button")
    page.get_by_role("menuitem", name="Print / save as PDF").click()
    page.wait_for_selector("#print-view:not([hidden])")
    page.wait_for_function("() => window.__printed === 1")
    view = page.locator("#print-view")
    assert page.text_content("#print-title") == f"Ward 3 {XSS}"
    assert "Started" in (page.text_content(".print-dates") or "")
    roles = view.locator(".print-role").all_text_contents()
    assert roles == ["You", "Assistant", "You", "Assistant"]
    assert view.locator(".print-msg time").count() == 4
    assert view.locator(".print-user").first.text_content().endswith(f"**Dose** check {XSS}")
    answer = view.locator(".print-assistant .print-body").first
    assert answer.locator("strong").first.text_content() == "Dose"  # Markdown rendered
    assert view.locator(".print-assistant em").first.text_content() == "second"
    assert view.locator("img").count() == 0 and page.locator("img").count() == 0
    assert page.evaluate("window.__xss") is None
    page.focus("#print-now")  # the chat behind the view is out of reach of Tab
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("!document.activeElement.closest('.topbar, #chat-view')")
    shot(page, "print-desktop")

    # For print: only the view, without its buttons, and every message.
    page.emulate_media(media="print")
    for chrome in (".topbar", "#sidebar", "#composer", ".print-toolbar", "#messages"):
        assert page.locator(chrome).first.is_hidden(), chrome
    assert view.locator(".print-msg").count() == 4
    assert all(m.is_visible() for m in view.locator(".print-msg").all())
    pdf = page.pdf(format="A4")
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    page.emulate_media(media="screen")

    # Escape closes it and gives the focus back to the conversation's menu button.
    page.keyboard.press("Escape")
    page.wait_for_selector("#print-view", state="hidden")
    assert page.evaluate("document.activeElement.className") == "conv-menu-button"
    assert page.evaluate("window.__xss") is None
    page.set_viewport_size(PHONE)
    page.click("#sidebar-toggle")
    page.click(".conv-item .conv-menu-button")
    page.get_by_role("menuitem", name="Print / save as PDF").click()
    page.wait_for_function("() => window.__printed === 2")
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 1
    shot(page, "print-390")
    page.click("#print-close")
    page.wait_for_selector("#print-view", state="hidden")
    assert not console.csp_violations(), console.messages
    assert not console.page_errors(), console.messages


def box(page: Any, selector: str) -> dict[str, float]:
    b = page.locator(selector).bounding_box()
    assert b, selector
    return b


def test_phone_header_and_composer(browser: Any, fake_web: FakeWeb) -> None:
    password = fake_web.add_user("phone.nurse")
    context = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
    try:
        page = context.new_page()
        console = Console(page)
        login(page, fake_web.url, "phone.nurse", password)
        send(page, "a question from the ward", timeout_ms=30_000)

        # One short row: named icon buttons, the title cut short, nothing else.
        header = box(page, ".topbar")
        assert header["height"] <= 56, header
        for name in ("Conversations", "My data", "Log out"):
            button = page.get_by_role("button", name=name, exact=True)
            assert button.is_visible(), name
            b = button.bounding_box()
            assert b and b["width"] >= 44 and b["height"] >= 44, (name, b)
            assert header["y"] <= b["y"] and b["y"] + b["height"] <= header["y"] + header["height"]
        assert page.is_hidden("#whoami") and page.is_hidden("#change-password")
        brand = box(page, ".brand")
        assert brand["x"] + brand["width"] <= box(page, "#theme-select")["x"]
        assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 1
        shot(page, "phone-header-390")

        # My data on the phone: the dialog fits the screen.
        open_with_keyboard(page)
        dialog = box(page, "#mydata")
        assert dialog["x"] >= 0 and dialog["x"] + dialog["width"] <= PHONE["width"]
        shot(page, "mydata-390")
        page.keyboard.press("Escape")
        page.wait_for_selector("#mydata", state="hidden")

        # A touch keyboard open: 500 px of height left. The box and Send are in view.
        page.set_viewport_size(KEYBOARD_OPEN)
        page.focus("#composer-input")
        page.wait_for_timeout(100)
        send_box = box(page, "#send")
        field = box(page, "#composer-input")
        assert send_box["width"] >= 44 and send_box["height"] >= 44, send_box
        for b in (send_box, field):
            assert b["y"] >= 0 and b["y"] + b["height"] <= KEYBOARD_OPEN["height"], b
            assert b["x"] >= 0 and b["x"] + b["width"] <= KEYBOARD_OPEN["width"], b
        assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 1
        assert box(page, ".topbar")["height"] <= 56
        shot(page, "phone-keyboard-390x500")
        page.fill("#composer-input", "sent with the keyboard open")
        page.locator("#send").tap()
        page.wait_for_function("() => document.querySelectorAll('.msg-assistant').length === 2",
                               timeout=30_000)
        assert not console.csp_violations(), console.messages
        assert not console.page_errors(), console.messages
    finally:
        context.close()


def test_the_desktop_header_keeps_its_words(ctx: Any, fake_web: FakeWeb) -> None:
    password = fake_web.add_user("desk.nurse")
    page = ctx.new_page()
    login(page, fake_web.url, "desk.nurse", password)
    for sel, words in (("#mydata-open", "My data"), ("#logout", "Log out")):
        assert page.is_visible(sel) and (page.inner_text(sel) or "").strip() == words, sel
    assert page.is_hidden("#change-password")  # in My data: the top bar stays one row
    row = box(page, ".brand")
    for sel in ("#quota", "#whoami", "#theme-select", "#mydata-open", "#logout"):
        b = box(page, sel)
        assert b["y"] < row["y"] + row["height"] and row["y"] < b["y"] + b["height"], sel
    assert page.is_visible("#whoami") and page.is_visible("#quota")
