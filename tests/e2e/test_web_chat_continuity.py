"""The chat page keeps the user's work across interruptions, in a real browser (Debian's
Chromium through Playwright) against the real app over the FakeEngine in echo mode, with
slow tokens so a test can press Stop in the middle of an answer:

  * Stop during the first answer of a new chat keeps the conversation: it is listed, the
    answer carries a "Stopped" mark (also after a reload), and follow-ups continue it;
  * a session that ends while a message is typed: signing in again as the same user brings
    back the typed text and the open conversation; another user gets a clean page;
  * changing one's own password from the chat page.

Screenshots go to test-artifacts/web/chat-*.png.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.e2e.web_fixtures import (  # noqa: F401  (fixtures)
    DESKTOP,
    PHONE,
    FakeWeb,
    browser,
    one_more_send,
    send,
    shot,
    sign_in_chat,
    start_fake_web,
    submit_sign_in,
)

# Echoed one word per token, 0.25 s apart: about 4 s to press Stop in the middle of it.
LONG_QUESTION = ("Please describe the fluid balance chart for bed four in plain words so "
                 "the night shift can follow it")


@pytest.fixture(scope="module")
def slow_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeWeb]:
    web = start_fake_web(tmp_path_factory.mktemp("slow-web"),
                         DEEPSEEKD_TEST_FAKE_TOKEN_DELAY="0.25")
    try:
        yield web
    finally:
        web.stop(timeout=30)


class Console:
    """CSP violations and page errors of one page."""

    def __init__(self, page: Any) -> None:
        self.problems: list[str] = []
        page.on("console", lambda m: self.problems.append(m.text)
                if "Content Security Policy" in m.text or "Refused to" in m.text else None)
        page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))


def fill_login(page: Any, user: str, password: str) -> None:
    page.wait_for_selector("#login-view:not([hidden])")
    submit_sign_in(page, user, password)


def signed_in(page: Any, web: FakeWeb) -> None:
    """Wait for the chat after a sign-in; when it does not come, say what the page and the
    daemon said instead (CI once timed out here and kept nothing else)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_selector("#chat-view:not([hidden])")
    except PlaywrightTimeout:
        shown = page.text_content("#login-error") if page.is_visible("#login-error") else None
        tail = "\n".join(web.log().splitlines()[-40:])
        raise AssertionError(f"no chat after sign-in; login error: {shown!r}\n{tail}") from None


def answers(page: Any) -> list[str]:
    return [t.strip() for t in page.locator(".msg-assistant .answer").all_text_contents()]


def end_session_elsewhere(page: Any, base: str) -> None:
    """Log the page's session out behind its back (as another tab would)."""
    token = page.request.get(base + "/auth/session").json()["csrf_token"]
    assert page.request.post(base + "/auth/logout", headers={"X-CSRF-Token": token}).ok
    assert page.request.get(base + "/auth/session").status == 401


def stored(page: Any, base: str, conv_id: str) -> dict[str, Any]:
    res = page.request.get(f"{base}/v1/conversations/{conv_id}")
    assert res.ok, res.text()
    return res.json()


def the_conversation_id(page: Any, base: str) -> str:
    listed = page.request.get(base + "/v1/conversations").json()["data"]
    assert len(listed) == 1, listed
    return listed[0]["id"]


# --------------------------------------------------------------------------- Stop


def test_stop_during_the_first_answer_keeps_the_conversation(browser: Any,
                                                             slow_web: FakeWeb) -> None:
    base = slow_web.url
    password = slow_web.add_user("stop.nurse")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        console = Console(page)
        sign_in_chat(page, "stop.nurse", password, base)
        page.fill("#composer-input", LONG_QUESTION)
        page.press("#composer-input", "Enter")
        page.wait_for_function(
            "() => (document.querySelector('.msg-assistant .answer')?.textContent || '')"
            ".split(' ').length >= 2", timeout=30_000)
        page.click("#stop")
        page.wait_for_function("() => document.body.dataset.busy !== 'true'", timeout=10_000)
        shown = answers(page)[0]
        assert shown and LONG_QUESTION.startswith(shown) and shown != LONG_QUESTION, shown

        # Marked as stopped, and the new conversation is kept and listed at once.
        mark = page.locator(".msg-assistant .msg-stopped")
        assert mark.count() == 1 and mark.is_visible()
        assert "Stopped" in (mark.text_content() or "")
        page.wait_for_selector(".conv-item.active")
        assert page.locator(".conv-item").count() == 1
        assert page.text_content("#chat-title") == LONG_QUESTION[:80]
        shot(page, "stopped-first-answer-desktop")

        # A follow-up right away continues the same conversation (no "no conversation").
        send(page, "and then")
        assert page.is_hidden("#chat-error"), page.text_content("#chat-error")
        assert answers(page)[-1] == "and then"
        assert page.locator(".conv-item").count() == 1
        conv_id = the_conversation_id(page, base)
        data = stored(page, base, conv_id)
        assert [bool(t.get("stopped")) for t in data["turns"]] == [True, False]
        # The stored history is the conversation once (the page continued what was kept).
        assert [m["role"] for m in data["messages"]] == ["user", "assistant"] * 2
        stopped_answer = data["turns"][0]["answer"]
        assert stopped_answer.startswith(shown) and LONG_QUESTION.startswith(stopped_answer)

        # After a reload: listed, the mark on the stopped answer only, and it goes on.
        page.reload()
        page.wait_for_selector(".conv-item .conv-open")
        assert page.locator(".conv-item").count() == 1
        page.click(".conv-item .conv-open")
        page.wait_for_function("() => document.querySelectorAll('.msg-assistant').length === 2")
        bubbles = page.locator(".msg-assistant")
        assert bubbles.nth(0).locator(".msg-stopped").is_visible()
        assert bubbles.nth(1).locator(".msg-stopped").count() == 0
        assert answers(page) == [stopped_answer, "and then"]
        shot(page, "stopped-reopened-desktop")
        page.set_viewport_size(PHONE)
        shot(page, "stopped-reopened-phone")
        page.set_viewport_size(DESKTOP)
        send(page, "one more")
        assert answers(page)[-1] == "one more"
        assert len(stored(page, base, conv_id)["turns"]) == 3
        assert console.problems == []
    finally:
        ctx.close()


def test_leaving_during_an_answer_keeps_it_marked(browser: Any, slow_web: FakeWeb) -> None:
    """Leaving the page in the middle of an answer: back on the page, the question and what
    was generated are there, marked as stopped."""
    base = slow_web.url
    password = slow_web.add_user("leave.nurse")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        sign_in_chat(page, "leave.nurse", password, base)
        page.fill("#composer-input", LONG_QUESTION)
        page.press("#composer-input", "Enter")
        page.wait_for_function(
            "() => (document.querySelector('.msg-assistant .answer')?.textContent || '')"
            ".split(' ').length >= 2", timeout=30_000)
        page.goto("about:blank")
        page.wait_for_timeout(1_000)
        page.goto(base + "/")
        page.wait_for_selector(".conv-item .conv-open", timeout=15_000)
        page.click(".conv-item .conv-open")
        page.wait_for_selector(".msg-assistant .msg-stopped")
        assert page.text_content(".msg-user .msg-body") == LONG_QUESTION
        assert LONG_QUESTION.startswith(answers(page)[0])
    finally:
        ctx.close()


# --------------------------------------------------------------------------- ended sessions


def test_signing_in_again_keeps_the_draft_and_the_conversation(browser: Any,
                                                               slow_web: FakeWeb) -> None:
    base = slow_web.url
    password = slow_web.add_user("draft.nurse")
    other_password = slow_web.add_user("draft.doctor")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        console = Console(page)
        sign_in_chat(page, "draft.nurse", password, base)
        send(page, "first question")
        conv_id = the_conversation_id(page, base)

        # The session ends while a message is typed; sending it finds out.
        draft = "Bed 4: urine output\nlow since 02:00 — please review"
        page.fill("#composer-input", draft)
        end_session_elsewhere(page, base)
        page.press("#composer-input", "Enter")
        page.wait_for_selector("#login-view:not([hidden])")
        assert "Your session ended" in (page.text_content("#login-notice") or "")
        assert page.is_hidden("#chat-view")
        shot(page, "session-ended-draft-desktop")

        # The same user signs in again: the text and the open conversation are back.
        fill_login(page, "draft.nurse", password)
        page.wait_for_selector("#chat-view:not([hidden])")
        page.wait_for_function("() => document.querySelectorAll('.msg-assistant').length === 1")
        assert page.locator("#composer-input").input_value() == draft
        assert page.text_content("#chat-title") == "first question"
        assert answers(page) == ["first question"]
        page.wait_for_selector(".conv-item.active")
        assert page.get_attribute(".conv-item.active", "data-id") == conv_id
        shot(page, "session-resumed-desktop")
        with one_more_send(page):
            page.press("#composer-input", "Enter")  # it goes on in the same conversation
        assert answers(page)[-1] == " ".join(draft.split())  # the echo, one line
        assert len(stored(page, base, conv_id)["turns"]) == 2
        assert page.locator(".conv-item").count() == 1

        # Another user signing in on this page gets a clean page, not the last one's work.
        page.fill("#composer-input", "not for the next person")
        end_session_elsewhere(page, base)
        page.press("#composer-input", "Enter")
        page.wait_for_selector("#login-view:not([hidden])")
        fill_login(page, "draft.doctor", other_password)
        page.wait_for_selector("#chat-view:not([hidden])")
        page.wait_for_selector("#conv-empty:not([hidden])")
        assert page.locator("#composer-input").input_value() == ""
        assert page.text_content("#chat-title") == "New chat"
        assert page.locator(".msg").count() == 0
        assert page.locator(".conv-item").count() == 0
        assert console.problems == []
    finally:
        ctx.close()


# --------------------------------------------------------------------------- password


def test_change_password_from_the_chat_page(browser: Any, slow_web: FakeWeb) -> None:
    base = slow_web.url
    password = slow_web.add_user("pw.nurse")
    new_password = "correct horse battery staple"
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        console = Console(page)
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        sign_in_chat(page, "pw.nurse", password, base)
        send(page, "keep this open")
        page.fill("#composer-input", "half-typed")

        page.click("#mydata-open")  # the password form is in My data
        page.click("#mydata-password")
        page.wait_for_selector("#password-view:not([hidden])")
        assert page.is_hidden("#chat-view")
        assert page.text_content("#password-title") == "Choose a new password"
        assert page.is_visible("#password-cancel")  # not required: may go back
        shot(page, "change-password-desktop")

        # The repeat is checked before anything is sent.
        page.fill("#password-current", password)
        page.fill("#password-new", new_password)
        page.fill("#password-repeat", new_password + "x")
        page.click("#password-submit")
        page.wait_for_selector("#password-repeat-error:not([hidden])")
        assert "do not match" in (page.text_content("#password-repeat-error") or "")
        assert not [u for u in posts if u.endswith("/auth/password")]

        # The server's errors appear at the field they are about.
        page.fill("#password-new", "short")
        page.fill("#password-repeat", "short")
        page.click("#password-submit")
        page.wait_for_selector("#password-new-error:not([hidden])")
        assert "new_password" in (page.text_content("#password-new-error") or "")
        assert page.get_attribute("#password-new", "aria-invalid") == "true"
        page.fill("#password-current", "not my password")
        page.fill("#password-new", new_password)
        page.fill("#password-repeat", new_password)
        page.click("#password-submit")
        page.wait_for_selector("#password-current-error:not([hidden])")
        assert "current password is wrong" in (page.text_content("#password-current-error") or "")
        assert page.is_hidden("#password-new-error")

        # Cancel goes back to the chat as it was.
        page.click("#password-cancel")
        page.wait_for_selector("#chat-view:not([hidden])")
        assert answers(page) == ["keep this open"]
        assert page.locator("#composer-input").input_value() == "half-typed"

        page.click("#mydata-open")  # the password form is in My data
        page.click("#mydata-password")
        assert page.locator("#password-current").input_value() == ""  # fields start empty
        page.fill("#password-current", password)
        page.fill("#password-new", new_password)
        page.fill("#password-repeat", new_password)
        page.click("#password-submit")
        page.wait_for_selector("#chat-view:not([hidden])")
        assert "password was changed" in (page.text_content("#chat-status") or "")
        assert answers(page) == ["keep this open"]
        assert page.locator("#composer-input").input_value() == "half-typed"
        send(page, "still signed in")
        assert answers(page)[-1] == "still signed in"

        # The new password is the one that works now.
        page.click("#logout")
        fill_login(page, "pw.nurse", password)
        page.wait_for_selector("#login-error:not([hidden])")
        assert "Wrong username or password" in (page.text_content("#login-error") or "")
        fill_login(page, "pw.nurse", new_password)
        signed_in(page, slow_web)
        assert console.problems == []
    finally:
        ctx.close()
