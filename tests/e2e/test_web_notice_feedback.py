"""The acceptable-use notice and answer feedback in a real Chromium, against the real app over
the FakeEngine in echo mode (its own daemon for this module, so the counts are this module's):

* the admin publishes a notice from the console (Settings);
* a clinician sees it once, as text, in a modal dialog that keeps the focus and that Escape
  does not close; accepts; chats; rates the answer 👎 with a comment holding XSS payloads,
  which stays text; the rating survives a reload; all of it at desktop and 390 px width;
* the admin sees the counts in the Usage tab (never the comment);
* a new version asks again, even on a page that was already open.

No CSP refusal and no script error on any page. Screenshots: test-artifacts/web/
chat-notice-*.png, chat-feedback-*.png, admin-notice*.png, admin-feedback*.png.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.web_fixtures import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    DESKTOP,
    PHONE,
    FakeWeb,
    Problems,
    _run,
    browser,
    fake_web,
    send,
    shoot_admin,
    sign_in_admin,
    sign_in_chat,
    totp_now,
)
from tests.support.store_setup import add_users

NOTICE_V1 = ("Acceptable use of the clinical assistant\n\n"
             "1. Use it for work only.\n"
             '2. <img src=x onerror="window.__xss=1"> is not a picture: this notice is text.\n'
             "3. Check every answer before acting on it.")
NOTICE_V2 = "Version two.\nAnswers are drafts: a clinician signs off every decision."
COMMENT = ('Wrong dose <img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
           "\nsecond line & \"quotes\"")
VIEWPORTS = {"desktop": DESKTOP, "phone": PHONE}


@pytest.fixture(scope="module")
def problems() -> Iterator[Problems]:
    p = Problems()
    yield p
    assert p.seen == [], p.seen  # no CSP refusal, no script error, on any page


@pytest.fixture(scope="module")
def people(fake_web: FakeWeb) -> dict[str, str]:
    [admin] = _run(add_users(fake_web.db_url, fake_web.data_dir, ["nf.boss"], "admin"))
    assert admin.password and admin.totp_uri
    return {"admin_password": admin.password, "totp_uri": admin.totp_uri,
            **{name: fake_web.add_user(name) for name in ("nf.desk", "nf.phone")}}


@pytest.fixture(scope="module")
def console(browser: Browser, fake_web: FakeWeb, people: dict[str, str],
            problems: Problems) -> Iterator[Page]:
    ctx = browser.new_context(base_url=fake_web.url, viewport=DESKTOP)
    page = problems.watch(ctx.new_page())
    sign_in_admin(page, "nf.boss", people["admin_password"], totp_now(people["totp_uri"]))
    yield page
    ctx.close()


def publish(console: Page, text: str) -> None:
    console.click("#tab-settings")
    console.fill("#aup-text", text)
    expect(console.locator("#aup-count")).to_have_text(f"{len(text):,} of 4,000 characters")
    console.click("#aup-save")
    expect(console.locator("#confirm")).to_be_visible()
    console.click("#confirm-ok")
    expect(console.locator("#aup-state")).to_contain_text("Published")


def no_sideways_scroll(page: Page) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"page is {overflow}px wider than the screen"


def test_the_admin_publishes_a_notice(console: Page) -> None:
    console.click("#tab-settings")
    expect(console.locator("#aup-state")).to_have_text(
        "No notice has been set: the chat page asks nothing.")
    publish(console, NOTICE_V1)
    expect(console.locator("#aup-state")).to_contain_text("Version 1")
    expect(console.locator("#aup-state")).to_contain_text("accepted by 0 users")
    expect(console.locator("#aup-text")).to_have_value(NOTICE_V1)
    # Publishing the same text again asks for nothing.
    console.click("#aup-save")
    expect(console.locator("#aup-state")).to_have_text(
        "Nothing to publish: this is the notice in force.")
    expect(console.locator("#confirm")).to_be_hidden()
    shoot_admin(console, "notice")


def check_notice_dialog(page: Page, name: str) -> None:
    """The notice shows as text, keeps the focus, and Escape does not dismiss it."""
    dialog = page.locator("#notice-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#notice-text")).to_be_focused()
    assert page.locator("#notice-text").evaluate("el => el.textContent") == NOTICE_V1
    assert page.locator("#notice-text img, #notice-dialog img").count() == 0
    expect(page.locator("#notice-intro")).to_contain_text("version 1")
    page.keyboard.press("Escape")
    expect(dialog).to_be_visible()
    # Tab and Shift+Tab go round inside the dialog.
    for key, focused in (("Tab", "#notice-accept"), ("Tab", "#notice-logout"),
                         ("Tab", "#notice-text"), ("Shift+Tab", "#notice-logout")):
        page.keyboard.press(key)
        expect(page.locator(focused)).to_be_focused()
    # The chat behind it cannot be reached.
    assert page.locator("#composer-input").evaluate("el => el.matches(':focus')") is False
    page.screenshot(path=str(ARTIFACTS / f"chat-notice-{name}.png"), full_page=True)
    no_sideways_scroll(page)


def rate_down_with_comment(page: Page, name: str) -> None:
    answer = page.locator(".msg-assistant").last
    feedback = answer.locator(".feedback")
    expect(feedback).to_be_visible()
    up, down = feedback.locator(".fb-up"), feedback.locator(".fb-down")
    expect(down).to_have_attribute("aria-pressed", "false")
    expect(feedback.get_by_role("button", name="No", exact=True)).to_have_count(1)
    down.focus()
    page.keyboard.press("Enter")  # keyboard operable
    expect(down).to_have_attribute("aria-pressed", "true")
    expect(up).to_have_attribute("aria-pressed", "false")
    box = feedback.locator("textarea")
    expect(box).to_be_focused()  # a thumbs down invites a comment
    box.fill(COMMENT)
    feedback.get_by_role("button", name="Save comment").click()
    expect(feedback.locator(".fb-status")).to_contain_text("saved")
    expect(feedback.locator(".fb-comment-toggle")).to_be_focused()
    text = feedback.locator(".fb-comment-text")
    assert text.evaluate("el => el.textContent") == COMMENT
    assert feedback.locator("img, script").count() == 0
    assert page.evaluate("typeof window.__xss") == "undefined"
    page.screenshot(path=str(ARTIFACTS / f"chat-feedback-{name}.png"), full_page=True)
    no_sideways_scroll(page)


@pytest.mark.parametrize("name", list(VIEWPORTS))
def test_a_clinician_accepts_once_chats_and_rates(browser: Browser, fake_web: FakeWeb,
                                                 people: dict[str, str], problems: Problems,
                                                 name: str) -> None:
    user = f"nf.{'desk' if name == 'desktop' else 'phone'}"
    ctx = browser.new_context(base_url=fake_web.url, viewport=VIEWPORTS[name])
    try:
        page = problems.watch(ctx.new_page())
        sign_in_chat(page, user, people[user])
        check_notice_dialog(page, name)
        page.click("#notice-accept")
        expect(page.locator("#notice-dialog")).to_be_hidden()
        expect(page.locator("#composer-input")).to_be_focused()
        # Accepted once: a reload does not ask again.
        page.reload()
        expect(page.locator("#chat-view")).to_be_visible()
        expect(page.locator("#composer-input")).to_be_focused()
        assert page.locator("#notice-dialog").count() == 0

        send(page, "Which dose for a child of 12 kg?")
        expect(page.locator(".msg-assistant .answer").last).to_contain_text("12 kg")
        rate_down_with_comment(page, name)

        # The rating is stored with the turn: it is there when the conversation is opened again.
        page.reload()
        expect(page.locator(".conv-item")).to_have_count(1)
        if not page.locator(".conv-open").first.is_visible():  # a phone: the list is folded
            page.click("#sidebar-toggle")
        page.locator(".conv-open").first.click()
        feedback = page.locator(".msg-assistant .feedback").last
        expect(feedback.locator(".fb-down")).to_have_attribute("aria-pressed", "true")
        expect(feedback.locator(".fb-comment")).to_be_visible()
        assert feedback.locator(".fb-comment-text").evaluate("el => el.textContent") == COMMENT
        # Changing one's mind replaces the rating; pressing it again takes it back.
        feedback.locator(".fb-up").press(" ")
        expect(feedback.locator(".fb-up")).to_have_attribute("aria-pressed", "true")
        expect(feedback.locator(".fb-down")).to_have_attribute("aria-pressed", "false")
        feedback.locator(".fb-down").click()
        expect(feedback.locator(".fb-down")).to_have_attribute("aria-pressed", "true")
        expect(feedback.locator(".fb-comment")).to_be_visible()  # the comment stays with it
        assert page.evaluate("typeof window.__xss") == "undefined"
    finally:
        ctx.close()


def test_the_admin_sees_counts_never_the_comment(console: Page) -> None:
    console.click("#tab-usage")
    rows = console.locator("#feedback-table tbody tr[data-model]")
    expect(rows).to_have_count(1)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    cells = [c.strip() for c in rows.first.locator("td").all_inner_texts()]
    assert cells == ["fake-model", "—", today, "0", "2", "2"]
    expect(console.locator("#feedback-summary")).to_contain_text(
        "2 rating(s), 0 up, 2 down, 2 with a comment")
    assert "Wrong dose" not in console.locator("#panel-usage").inner_text()
    assert "12 kg" not in console.locator("#panel-usage").inner_text()
    shoot_admin(console, "feedback")
    console.click("#tab-settings")
    expect(console.locator("#aup-state")).to_contain_text("accepted by 2 users")


def test_a_new_version_asks_again(browser: Browser, fake_web: FakeWeb, console: Page,
                                  people: dict[str, str], problems: Problems) -> None:
    ctx = browser.new_context(base_url=fake_web.url, viewport=DESKTOP)
    try:
        page = problems.watch(ctx.new_page())
        sign_in_chat(page, "nf.desk", people["nf.desk"])
        expect(page.locator("#composer-input")).to_be_focused()
        assert page.locator("#notice-dialog").count() == 0  # version 1 is accepted
        publish(console, NOTICE_V2)
        expect(console.locator("#aup-state")).to_contain_text("Version 2")
        # The page was open: its next send is refused, the message comes back and the new
        # version is asked for.
        send(page, "Is this still allowed?")
        expect(page.locator("#notice-dialog")).to_be_visible()
        assert page.locator("#notice-text").evaluate("el => el.textContent") == NOTICE_V2
        expect(page.locator("#notice-intro")).to_contain_text("version 2")
        expect(page.locator("#composer-input")).to_have_value("Is this still allowed?")
        page.screenshot(path=str(ARTIFACTS / "chat-notice-v2.png"), full_page=True)
        page.click("#notice-accept")
        expect(page.locator("#notice-dialog")).to_be_hidden()
        send(page, "Is this still allowed?")
        expect(page.locator(".msg-assistant .answer").last).to_contain_text("still allowed")
        expect(page.locator(".msg-assistant .feedback").last).to_be_visible()
    finally:
        ctx.close()
    # The other clinician is asked at the next sign-in.
    ctx = browser.new_context(base_url=fake_web.url, viewport=PHONE)
    try:
        page = problems.watch(ctx.new_page())
        sign_in_chat(page, "nf.phone", people["nf.phone"])
        expect(page.locator("#notice-dialog")).to_be_visible()
        assert page.locator("#notice-text").evaluate("el => el.textContent") == NOTICE_V2
        page.click("#notice-logout")
        expect(page.locator("#login-view")).to_be_visible()
        expect(page.locator("#notice-dialog")).to_be_hidden()
    finally:
        ctx.close()
