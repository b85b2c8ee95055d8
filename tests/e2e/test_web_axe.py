"""Accessibility of both pages in a real Chromium, against the real app over the FakeEngine as
an echoing reasoning model (its own daemon for this module):

* axe-core (tests/e2e/axe_check.py; WCAG 2.0/2.1 A and AA rules) finds no serious or critical
  violation in any page state that matters, at desktop width and at 390 px: the chat page's
  sign-in and password forms, the empty chat, a streamed answer with reasoning, a code block
  and a table, the conversation list with an actions menu open, the acceptable-use notice,
  and the dark theme; the console's sign-in, each of its tabs, and the auditor's tabs;
* the focus after an answer: back in the message box when it was there (or on Send or
  Stop), left where the user moved it while the answer streamed;
* one keyboard-only path through the chat page: sign in, send, stop, open a conversation,
  rename it from its actions menu, sign out, the focus checked at every step.

Each run's findings (every impact) are kept in test-artifacts/web/axe-<state>.json.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e import web_fixtures
from tests.e2e.axe_check import assert_accessible, axe_version, axe_violations
from tests.e2e.web_fixtures import (
    DESKTOP,
    PHONE,
    FakeWeb,
    _run,
    one_more_send,
    send,
    sign_in_admin,
    sign_in_chat,
    start_fake_web,
    submit_sign_in,
    totp_now,
)
from tests.support.store_setup import add_users

ADMIN, AUDITOR = "ax.boss", "ax.audit"
ANSWER = (
    "Two options:\n\n```python\ndef dose(kg):\n    return 15 * kg\n```\n\n"
    "| Drug | Dose |\n| --- | ---: |\n| Paracetamol | 1 g |\n| Ibuprofen | 400 mg |\n\n"
    "Check the **renal function** first."
)
LONG = " ".join(f"word{i}" for i in range(400))  # about 8 s of streaming at 20 ms a token
PROBLEMS: list[str] = []
chromium = web_fixtures.browser  # the module's Chromium (a fixture, under this name here)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeWeb]:
    w = start_fake_web(
        tmp_path_factory.mktemp("axe-web"),
        DEEPSEEKD_TEST_FAKE_TOKEN_DELAY="0.02",
        DEEPSEEKD_TEST_FAKE_ECHO_EXACT="1",
        DEEPSEEKD_TEST_FAKE_THINK="3",
        DEEPSEEKD_TEST_FAKE_MAX_MODEL_LEN="4096",
        DEEPSEEKD_BREAKGLASS__ALLOWED=ADMIN,
    )
    try:
        yield w
    finally:
        w.stop(timeout=30)
    assert PROBLEMS == [], PROBLEMS  # no CSP refusal, no script error, on any page


@pytest.fixture(scope="module")
def people(web: FakeWeb) -> dict[str, Any]:
    [admin] = _run(add_users(web.db_url, web.data_dir, [ADMIN], "admin"))
    [auditor] = _run(add_users(web.db_url, web.data_dir, [AUDITOR], "auditor"))
    users = {
        n: web.add_user(n) for n in ("ax.desk", "ax.focus", "ax.keys", "ax.notice", "ax.panels")
    }
    return {"admin": admin, "auditor": auditor, **users}


def new_page(chromium: Browser, web: FakeWeb, **ctx: Any) -> Page:
    page = chromium.new_context(base_url=web.url, viewport=DESKTOP, **ctx).new_page()
    page.on(
        "console",
        lambda m: (
            PROBLEMS.append(f"{page.url}: {m.text}")
            if m.type == "error" and ("Content Security Policy" in m.text or "Refused to" in m.text)
            else None
        ),
    )
    page.on("pageerror", lambda e: PROBLEMS.append(f"{page.url}: pageerror {e}"))
    return page


def both_widths(page: Page, name: str, before_phone: Any = None) -> None:
    """axe at desktop width, then at 390 px (`before_phone` re-opens what the resize hid)."""
    assert_accessible(page, name)
    page.set_viewport_size(PHONE)
    try:
        page.wait_for_timeout(150)
        if before_phone:
            before_phone()
        assert_accessible(page, f"{name}-390")
    finally:
        page.set_viewport_size(DESKTOP)
        page.wait_for_timeout(150)


def focused(page: Page) -> str:
    """The focused element as `tag#id.class` (a test message that reads well)."""
    return page.evaluate("""() => { const e = document.activeElement;
      return e ? e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
        + (e.className && typeof e.className === 'string' ? '.' + e.className.split(' ')[0] : '')
        : 'none'; }""")


# --------------------------------------------------------------------------- chat page


def test_axe_catches_what_it_must(chromium: Browser, web: FakeWeb) -> None:
    """The check itself: on a page given an unlabelled field and grey-on-white text, axe
    reports both as serious, and assert_accessible fails naming them."""
    page = new_page(chromium, web)
    page.goto("/")
    expect(page.locator("#login-view")).to_be_visible()
    page.evaluate("""() => {
      const f = document.getElementById('login-form');
      f.append(document.createElement('input'));
      const p = document.createElement('p');
      p.textContent = 'Hard to read';
      p.style.color = '#bbbbbb';
      f.append(p); }""")
    found = {v["id"]: v["impact"] for v in axe_violations(page)}
    assert found.get("label") == "critical" and found.get("color-contrast") == "serious", found
    with pytest.raises(AssertionError, match=r"color-contrast \(serious\).*dequeuniversity"):
        assert_accessible(page, "self-check")
    page.context.close()
    assert re.fullmatch(r"4\.\d+\.\d+", axe_version()), axe_version()


def test_chat_sign_in_and_password_forms(
    chromium: Browser, web: FakeWeb, people: dict[str, Any]
) -> None:
    page = new_page(chromium, web)
    page.goto("/")
    expect(page.locator("#login-view")).to_be_visible()
    both_widths(page, "chat-sign-in")
    submit_sign_in(page, "ax.desk", "not the password")
    expect(page.locator("#login-error")).to_be_visible()
    assert_accessible(page, "chat-sign-in-error")
    sign_in_chat(page, "ax.desk", people["ax.desk"])
    page.click("#mydata-open")  # the password form is in My data
    page.click("#mydata-password")
    expect(page.locator("#password-view")).to_be_visible()
    both_widths(page, "chat-password")
    page.click("#password-submit")  # empty: the field errors show
    expect(page.locator("#password-current-error")).to_be_visible()
    assert_accessible(page, "chat-password-errors")
    page.context.close()


def open_sidebar_on_phone(page: Page) -> None:
    if page.locator("#sidebar-toggle").is_visible():
        page.click("#sidebar-toggle")
        expect(page.locator("#new-chat")).to_be_visible()


def open_first_menu(page: Page) -> None:
    open_sidebar_on_phone(page)
    page.locator(".conv-menu-button").first.click()
    expect(page.locator(".conv-menu-list").first).to_be_visible()


def test_chat_states(chromium: Browser, web: FakeWeb, people: dict[str, Any]) -> None:
    page = new_page(chromium, web)
    sign_in_chat(page, "ax.desk", people["ax.desk"])
    expect(page.locator("#empty-hint")).to_be_visible()
    both_widths(page, "chat-empty")
    send(page, ANSWER)
    answer = page.locator(".msg-assistant").last
    expect(answer.locator("pre code")).to_have_count(1)
    expect(answer.locator("table")).to_have_count(1)
    expect(answer.locator("details.reasoning")).to_be_visible()  # the reasoning, collapsed
    web_fixtures.shot(page, "answer-light")  # the README's (docs/screenshots/)
    both_widths(page, "chat-answer")
    answer.locator("details.reasoning summary").click()  # the reasoning open
    assert_accessible(page, "chat-answer-reasoning-open")
    open_first_menu(page)
    both_widths(page, "chat-menu", before_phone=lambda: open_first_menu(page))
    page.keyboard.press("Escape")
    page.select_option("#theme-select", "dark")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    web_fixtures.shot(page, "answer-dark")
    both_widths(page, "chat-dark-answer")
    open_first_menu(page)
    assert_accessible(page, "chat-dark-menu")
    page.keyboard.press("Escape")
    page.click("#logout")
    expect(page.locator("#login-view")).to_be_visible()
    both_widths(page, "chat-dark-sign-in")
    page.context.close()


def test_chat_panels(chromium: Browser, web: FakeWeb, people: dict[str, Any]) -> None:
    """The chat's panels, where the page has them: the options, a message being edited and
    the "My data" dialog, in both themes."""
    for scheme in ("light", "dark"):
        page = new_page(chromium, web, color_scheme=scheme)
        sign_in_chat(page, "ax.panels", people["ax.panels"])
        send(page, ANSWER)
        expect(page.locator(".msg-assistant table")).to_have_count(1)
        if page.locator("#chat-options").count():
            page.click("#chat-options summary")
            assert_accessible(page, f"chat-options-{scheme}")
        edit = page.locator(".msg-user button.edit-message, .edit-message")
        if edit.count():
            edit.first.click()
            expect(page.locator("textarea:focus")).to_have_count(1)
            both_widths(page, f"chat-editing-{scheme}")
            page.keyboard.press("Escape")
        if page.locator("#mydata-open").count():
            open_mydata = page.locator("#mydata-open")
            open_mydata.click()
            expect(page.locator("dialog#mydata")).to_be_visible()
            both_widths(page, f"chat-mydata-{scheme}")
        page.context.close()


def test_chat_dark_by_system_preference(
    chromium: Browser, web: FakeWeb, people: dict[str, Any]
) -> None:
    page = new_page(chromium, web, color_scheme="dark")
    sign_in_chat(page, "ax.desk", people["ax.desk"])
    page.locator(".conv-open").first.click()
    expect(page.locator(".msg-assistant table")).to_have_count(1)
    both_widths(page, "chat-dark-system")
    page.context.close()


# --------------------------------------------------------------------------- focus


def test_focus_after_streaming(chromium: Browser, web: FakeWeb, people: dict[str, Any]) -> None:
    """Back in the message box when it was there; where the user moved it otherwise."""
    page = new_page(chromium, web)
    sign_in_chat(page, "ax.focus", people["ax.focus"])
    send(page, "A short one.")
    expect(page.locator("#composer-input")).to_be_focused()
    # Sent with the Send button: the focus goes back to the box too.
    page.fill("#composer-input", "Another one.")
    with one_more_send(page):
        page.focus("#send")
        page.keyboard.press("Enter")
    expect(page.locator("#composer-input")).to_be_focused()
    # Moved to the search box while the answer streams: the focus stays there.
    with one_more_send(page):
        page.fill("#composer-input", LONG[:600])
        page.press("#composer-input", "Enter")
        expect(page.locator("#stop")).to_be_visible()
        page.focus("#conv-search")
    page.wait_for_timeout(300)
    expect(page.locator("#conv-search")).to_be_focused()
    page.context.close()


RING = """(sel) => { const e = document.querySelector(sel);
  const bg = (n) => { for (; n; n = n.parentElement) {
      const c = getComputedStyle(n).backgroundColor;
      if (c && c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') return c; }
    return getComputedStyle(document.documentElement).backgroundColor; };
  const s = getComputedStyle(e);
  return { ring: s.outlineColor, width: s.outlineWidth, style: s.outlineStyle,
           behind: bg(e.parentElement) }; }"""


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", css)[:3])


def contrast(a: str, b: str) -> float:
    def lum(css: str) -> float:
        c = [v / 255 for v in _rgb(css)]
        c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def ring_contrast(page: Page, selector: str) -> float:
    """Focus `selector` by keyboard (Tab from the element before it) and measure the
    contrast of its focus ring against what is behind it."""
    page.evaluate("(s) => document.querySelector(s).blur()", selector)
    page.focus(selector)  # a keyboard-like focus: :focus-visible on inputs
    r = page.evaluate(RING, selector)
    assert r["style"] == "solid" and r["width"] == "3px", r
    return contrast(r["ring"], r["behind"])


def test_focus_ring_contrast(chromium: Browser, web: FakeWeb, people: dict[str, Any]) -> None:
    """The keyboard focus ring stands out at 3:1 or more (WCAG 1.4.11) in both themes of the
    chat page and in the console."""
    for scheme in ("light", "dark"):
        page = new_page(chromium, web, color_scheme=scheme)
        page.goto("/")
        expect(page.locator("#login-view")).to_be_visible()
        for sel in ("#login-username", "#login-password"):
            assert ring_contrast(page, sel) >= 3, (scheme, sel, ring_contrast(page, sel))
        sign_in_chat(page, "ax.desk", people["ax.desk"])
        assert ring_contrast(page, "#composer-input") >= 3, scheme
        page.context.close()
    page = new_page(chromium, web)
    page.goto("/admin")
    expect(page.locator("#login-view")).to_be_visible()
    assert ring_contrast(page, "#login-username") >= 3
    page.context.close()


# --------------------------------------------------------------------------- keyboard only


def tab_to(page: Page, selector: str, back: bool = False, most: int = 40) -> None:
    """Press Tab (or Shift+Tab) until `selector` has the focus."""
    for _ in range(most):
        if page.evaluate("(s) => document.activeElement?.matches(s) ?? false", selector):
            return
        page.keyboard.press("Shift+Tab" if back else "Tab")
    raise AssertionError(f"{selector} never got the focus; it is on {focused(page)}")


def test_keyboard_only_path(chromium: Browser, web: FakeWeb, people: dict[str, Any]) -> None:
    page = new_page(chromium, web)
    page.goto("/")
    expect(page.locator("#login-view")).to_be_visible(timeout=15_000)
    expect(page.locator("#login-username")).to_be_focused()
    kb = page.keyboard
    kb.type("ax.keys")
    kb.press("Tab")
    expect(page.locator("#login-password")).to_be_focused()
    kb.type(people["ax.keys"])
    kb.press("Enter")
    expect(page.locator("#chat-view")).to_be_visible()
    expect(page.locator("#composer-input")).to_be_focused()
    # Send, then stop with the keyboard.
    kb.type(LONG[:800])
    kb.press("Enter")
    expect(page.locator(".msg-assistant .answer")).to_contain_text("word3")  # streaming
    kb.press("Tab")
    expect(page.locator("#stop")).to_be_focused()
    kb.press("Enter")
    expect(page.locator(".msg-assistant .msg-stopped")).to_be_visible(timeout=15_000)
    expect(page.locator("#composer-input")).to_be_focused()
    expect(page.locator(".conv-item")).to_have_count(1, timeout=15_000)
    # A new chat, then open the stored conversation from the list.
    tab_to(page, "#new-chat", back=True)
    kb.press("Enter")
    expect(page.locator("#composer-input")).to_be_focused()
    expect(page.locator("#empty-hint")).to_be_visible()
    tab_to(page, ".conv-open", back=True)
    kb.press("Enter")
    expect(page.locator(".msg-assistant")).to_have_count(1)
    expect(page.locator(".conv-item.active")).to_have_count(1)
    # Its actions menu: Escape closes it on its button; Rename from it.
    tab_to(page, ".conv-menu-button")
    kb.press("Enter")
    expect(page.locator(".conv-menu-item.conv-pin")).to_be_focused()
    kb.press("Escape")
    expect(page.locator(".conv-menu-list")).to_be_hidden()
    expect(page.locator(".conv-menu-button")).to_be_focused()
    kb.press("Enter")
    kb.press("ArrowDown")
    expect(page.locator(".conv-menu-item.conv-rename")).to_be_focused()
    kb.press("Enter")
    rename = page.locator(".conv-rename-form input")
    expect(rename).to_be_focused()
    kb.press("Control+A")
    kb.type("Renamed by keyboard")
    kb.press("Enter")
    expect(page.locator(".conv-item .conv-title")).to_have_text("Renamed by keyboard")
    expect(page.locator("#chat-title")).to_have_text("Renamed by keyboard")
    expect(page.locator(".conv-menu-button")).to_be_focused()
    # Pin it from the same menu: it moves under "Pinned", the focus stays on its button.
    kb.press("Enter")
    expect(page.locator(".conv-menu-item.conv-pin")).to_be_focused()
    kb.press("Enter")
    expect(page.locator(".conv-group-heading")).to_have_text(["Pinned"])
    expect(page.locator(".conv-menu-button")).to_be_focused()
    # Sign out.
    tab_to(page, "#logout", back=True)
    kb.press("Enter")
    expect(page.locator("#login-view")).to_be_visible()
    expect(page.locator("#login-username")).to_be_focused()
    page.context.close()


# --------------------------------------------------------------------------- console


@pytest.fixture(scope="module")
def console(chromium: Browser, web: FakeWeb, people: dict[str, Any]) -> Iterator[Page]:
    admin = people["admin"]
    page = new_page(chromium, web)
    page.goto("/admin")
    expect(page.locator("#login-view")).to_be_visible()
    both_widths(page, "admin-sign-in")
    submit_sign_in(page, admin.name, admin.password, totp_now(admin.totp_uri))
    expect(page.locator("#admin-view")).to_be_visible(timeout=10_000)
    yield page
    page.context.close()


def each_tab(page: Page, tablist: str, prefix: str) -> list[str]:
    tabs = page.locator(f"{tablist} [role=tab]")
    names = []
    for i in range(tabs.count()):
        tab = tabs.nth(i)
        tab_id = tab.get_attribute("id") or f"tab{i}"
        tab.click()
        panel = page.locator(f"#{tab.get_attribute('aria-controls')}")
        expect(panel).to_be_visible()
        page.wait_for_load_state("networkidle")
        both_widths(page, f"{prefix}-{tab_id}")
        names.append(tab_id)
    return names


def test_console_tabs(console: Page) -> None:
    names = each_tab(console, "#tabs", "admin")
    assert {"tab-users", "tab-usage", "tab-settings", "tab-breakglass"} <= set(names), names
    console.click("#tab-users")
    console.locator("#users-table tbody tr").first.locator("button, a").first.click()
    expect(console.locator("#user-detail")).to_be_visible()
    assert_accessible(console, "admin-user-detail")
    console.click("#tab-breakglass")
    console.click("#bg-start")  # empty: the field errors show
    assert_accessible(console, "admin-breakglass-errors")


def test_auditor_tabs(chromium: Browser, web: FakeWeb, people: dict[str, Any]) -> None:
    auditor = people["auditor"]
    page = new_page(chromium, web)
    sign_in_admin(page, auditor.name, auditor.password)
    expect(page.locator("#audit-table")).to_have_attribute("aria-busy", "false")
    names = each_tab(page, "#audit-tabs", "audit")
    assert len(names) >= 3, names
    page.click("#atab-log")
    page.locator("#audit-table tbody tr").first.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#audit-detail")).to_be_visible()
    assert_accessible(page, "audit-detail")
    page.context.close()


# --------------------------------------------------------------------------- notice (last)


def test_notice_dialog(
    chromium: Browser, web: FakeWeb, people: dict[str, Any], console: Page
) -> None:
    """Published from the console (its confirm dialog checked too), shown to a user."""
    console.click("#tab-settings")
    console.fill("#aup-text", "Use it for work only.\nCheck every answer.")
    console.click("#aup-save")
    expect(console.locator("#confirm")).to_be_visible()
    assert_accessible(console, "admin-confirm")
    console.click("#confirm-ok")
    expect(console.locator("#aup-state")).to_contain_text("Published")
    for scheme in ("light", "dark"):
        page = new_page(chromium, web, color_scheme=scheme)
        page.goto("/")
        submit_sign_in(page, "ax.notice", people["ax.notice"])
        expect(page.locator("#notice-dialog")).to_be_visible()
        both_widths(page, f"chat-notice-{scheme}")
        page.context.close()
