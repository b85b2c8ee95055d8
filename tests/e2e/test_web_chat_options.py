"""The chat composer's options and the admins' system-prompt presets in a real Chromium,
against the real app over the FakeEngine in echo mode (its own daemon for this module, with
a 2048-token context so the answer lengths fit):

* the admin adds presets in the console (Settings), one with XSS payloads in its name and
  text, edits one and deletes one; the list shows them as text;
* a clinician picks a preset, which fills the conversation's system prompt; the system
  prompt reaches the model (the stored turn's prompt holds its words) and is restored, not
  shown as a message, when the conversation is opened again;
* "Short" caps the answer at 256 tokens (a note says why it stopped); the choice is kept
  across a reload;
* the model picker is hidden with one model; with two (an adapter listed too) it shows,
  sends the chosen one, is remembered per user and follows a reopened conversation;
* all of it usable at 390 px (no sideways scroll). No CSP refusal and no script error.

Screenshots: test-artifacts/web/admin-presets*.png, chat-options-*.png.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.e2e import web_fixtures
from tests.e2e.web_fixtures import (
    DESKTOP,
    PHONE,
    FakeWeb,
    Problems,
    _run,
    one_more_send,
    shoot_admin,
    shot,
    sign_in_admin,
    sign_in_chat,
    start_fake_web,
    totp_now,
)
from tests.support.store_setup import add_users

DISCHARGE = "Discharge summary"
DISCHARGE_TEXT = "Write a discharge summary for the GP.\nUse headings and plain words."
XSS_NAME = '<img src=x onerror="window.__xss=1">Explain to a patient'
XSS_TEXT = 'Explain simply. <script>window.__xss=2</script><b onmouseover="window.__xss=3">bold</b>'
LONG_WORDS = 300  # an echoed message longer than "Short" allows


browser = web_fixtures.browser  # the module's Chromium (a fixture)


@pytest.fixture(scope="module")
def problems() -> Iterator[Problems]:
    p = Problems()
    yield p
    assert p.seen == [], p.seen


@pytest.fixture(scope="module")
def options_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeWeb]:
    web = start_fake_web(tmp_path_factory.mktemp("options-web"),
                         DEEPSEEKD_TEST_FAKE_MAX_MODEL_LEN="2048")
    try:
        yield web
    finally:
        web.stop(timeout=30)


@pytest.fixture(scope="module")
def people(options_web: FakeWeb) -> dict[str, str]:
    [admin] = _run(add_users(options_web.db_url, options_web.data_dir, ["op.boss"], "admin"))
    assert admin.password and admin.totp_uri
    return {"admin_password": admin.password, "totp_uri": admin.totp_uri,
            **{name: options_web.add_user(name) for name in ("op.desk", "op.phone")}}


def xss_fired(page: Page) -> bool:
    return bool(page.evaluate("window.__xss !== undefined"))


def no_sideways_scroll(page: Page) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"page is {overflow}px wider than the screen"


def test_the_admin_manages_presets_in_the_console(browser: Browser, options_web: FakeWeb,
                                                  people: dict[str, str],
                                                  problems: Problems) -> None:
    ctx = browser.new_context(base_url=options_web.url, viewport=DESKTOP)
    page = problems.watch(ctx.new_page())
    try:
        sign_in_admin(page, "op.boss", people["admin_password"], totp_now(people["totp_uri"]))
        page.click("#tab-settings")
        expect(page.locator("#presets-state")).to_have_text(
            "No presets yet: the chat page offers none.")

        # Refused before any request: no name.
        page.fill("#preset-text", "orphan")
        page.click("#preset-save")
        expect(page.locator("#preset-form-error")).to_have_text("Give the preset a name.")

        for name, text in ((DISCHARGE, "first draft"), (XSS_NAME, XSS_TEXT),
                           ("Temporary", "to be deleted")):
            page.fill("#preset-name", name)
            page.fill("#preset-text", text)
            expect(page.locator("#preset-count")).to_have_text(f"{len(text)} of 4,000 characters")
            page.click("#preset-save")
            expect(page.locator("#presets-state")).to_have_text(f'Added "{name}".')
        items = page.locator("#presets-list .preset-name")
        expect(items).to_have_text([XSS_NAME, DISCHARGE, "Temporary"])  # by name ("<" first)

        # Edit: the form takes the preset; saving the same name replaces its text.
        page.get_by_role("button", name=f"Edit {DISCHARGE}").click()
        expect(page.locator("#preset-name")).to_have_value(DISCHARGE)
        expect(page.locator("#preset-text")).to_be_focused()
        page.fill("#preset-text", DISCHARGE_TEXT)
        page.click("#preset-save")
        expect(page.locator("#presets-state")).to_have_text(f'Saved "{DISCHARGE}".')
        first = page.locator("#presets-list li").nth(1)
        expect(first.locator(".preset-text")).to_have_text(DISCHARGE_TEXT)
        expect(first).to_contain_text("by op.boss")

        page.get_by_role("button", name="Delete Temporary").click()
        expect(page.locator("#confirm")).to_be_visible()
        page.click("#confirm-ok")
        expect(page.locator("#presets-state")).to_have_text('Deleted "Temporary".')
        expect(items).to_have_text([XSS_NAME, DISCHARGE])

        # The XSS preset is text in the list: no element from it, nothing ran.
        xss = page.locator("#presets-list li").first
        expect(xss.locator(".preset-text")).to_have_text(XSS_TEXT)
        assert xss.locator("img, script, b").count() == 0
        xss.hover()
        assert not xss_fired(page)
        shoot_admin(page, "presets")
    finally:
        ctx.close()


def send(page: Page, text: str) -> dict[str, object]:
    """Send ``text``; the request body the page sent."""
    with one_more_send(page):
        page.fill("#composer-input", text)
        with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as req:
            page.press("#composer-input", "Enter")
    return json.loads(req.value.post_data or "{}")  # type: ignore[no-any-return]


def stored(page: Page, title: str) -> dict[str, object]:
    """The stored conversation titled ``title``, read as the page would."""
    return page.evaluate("""async (title) => {
        const list = await (await fetch('/v1/conversations')).json();
        const c = list.data.find((x) => x.title === title);
        return await (await fetch('/v1/conversations/' + c.id)).json();
    }""", title)  # type: ignore[no-any-return]


def open_options(page: Page) -> None:
    if page.locator("#chat-options").get_attribute("open") is None:
        page.click("#chat-options > summary")
    expect(page.locator("#length-select")).to_be_visible()


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_preset_fills_the_system_prompt_that_reaches_the_model_and_comes_back(
        browser: Browser, options_web: FakeWeb, people: dict[str, str], problems: Problems,
        size: str) -> None:
    user = "op.desk" if size == "desktop" else "op.phone"
    ctx = browser.new_context(base_url=options_web.url,
                              viewport=DESKTOP if size == "desktop" else PHONE)
    page = problems.watch(ctx.new_page())
    try:
        sign_in_chat(page, user, people[user])
        expect(page.locator("#chat-options")).not_to_have_attribute("open", "")
        expect(page.locator("#options-summary")).to_have_text("(Long answers)")
        open_options(page)
        # One model served: nothing to pick.
        expect(page.locator("#model-field")).to_be_hidden()
        presets = page.locator("#preset-select option")
        expect(presets).to_have_text(["Choose a preset…", XSS_NAME, DISCHARGE])

        # The XSS preset's name and text stay text on the chat page too.
        page.select_option("#preset-select", label=XSS_NAME)
        expect(page.locator("#system-prompt")).to_have_value(XSS_TEXT)
        assert page.locator("#chat-options img, #chat-options script").count() == 0
        assert not xss_fired(page)

        page.select_option("#preset-select", label=DISCHARGE)
        expect(page.locator("#system-prompt")).to_have_value(DISCHARGE_TEXT)
        page.fill("#system-prompt", DISCHARGE_TEXT + " Be brief.")  # still editable
        expect(page.locator("#preset-select")).to_have_value("")  # no longer the preset
        page.fill("#system-prompt", DISCHARGE_TEXT)
        expect(page.locator("#preset-select")).to_have_value("1")
        expect(page.locator("#options-summary")).to_have_text("(Long answers · system prompt set)")
        no_sideways_scroll(page)
        shot(page, f"options-{size}")

        title = f"patient {size} went home today"
        body = send(page, title)
        assert body["messages"] == [{"role": "system", "content": DISCHARGE_TEXT},
                                    {"role": "user", "content": title}]
        assert "max_tokens" not in body and body["model"] == "fake-model"
        answer = page.locator("#messages .msg-assistant .msg-body.answer").last
        expect(answer).to_have_text(title)  # the echo: the last user message
        body = send(page, "second question")
        assert body["messages"][0] == {"role": "system", "content": DISCHARGE_TEXT}
        assert [m["role"] for m in body["messages"]] == [  # type: ignore[index]
            "system", "user", "assistant", "user"]

        # It reached the model: the stored turn's prompt holds the system prompt's words
        # (the FakeEngine's template is "role: content" per message, a token per word).
        conv = stored(page, title)
        turns = conv["turns"]
        assert isinstance(turns, list)
        assert turns[0]["messages"][0] == {"role": "system", "content": DISCHARGE_TEXT}
        plain = 2 + len(f"user: {title}".split())  # start, "user: ...", assistant
        system_words = len(f"system: {DISCHARGE_TEXT}".split())
        assert turns[0]["usage"]["prompt_tokens"] == plain + system_words

        # A new chat has none; opening the conversation again restores it, not as a bubble.
        page.click("#sidebar-toggle" if size == "phone" else "#new-chat")
        if size == "phone":
            page.click("#new-chat")
        expect(page.locator("#system-prompt")).to_have_value("")
        if size == "phone":
            page.click("#sidebar-toggle")
        page.locator(".conv-item .conv-open", has_text=title).click()
        expect(page.locator("#messages .msg-assistant")).to_have_count(2)
        expect(page.locator("#system-prompt")).to_have_value(DISCHARGE_TEXT)
        expect(page.locator("#preset-select")).to_have_value("1")
        expect(page.locator("#messages .msg-system")).to_have_count(0)
        expect(page.locator("#messages")).not_to_contain_text("plain words")
        # Removing it mid-conversation applies from the next message on.
        open_options(page)
        page.fill("#system-prompt", "")
        body = send(page, "third question")
        assert [m["role"] for m in body["messages"]] == [  # type: ignore[index]
            "user", "assistant", "user", "assistant", "user"]
        expect(page.locator("#messages .msg-user")).to_have_count(3)
        no_sideways_scroll(page)
        shot(page, f"options-restored-{size}")
    finally:
        ctx.close()


def test_short_answers_stop_at_256_tokens_and_the_choice_is_kept(
        browser: Browser, options_web: FakeWeb, people: dict[str, str],
        problems: Problems) -> None:
    ctx = browser.new_context(base_url=options_web.url, viewport=DESKTOP)
    page = problems.watch(ctx.new_page())
    long_text = " ".join(f"w{i}" for i in range(LONG_WORDS))
    try:
        sign_in_chat(page, "op.desk", people["op.desk"])
        open_options(page)
        page.select_option("#length-select", "short")
        expect(page.locator("#options-summary")).to_have_text("(Short answers)")
        body = send(page, long_text)
        assert body["max_tokens"] == 256
        answer = page.locator("#messages .msg-assistant").last
        words = answer.locator(".msg-body.answer").inner_text().split()
        assert words == long_text.split()[:256]
        expect(answer).to_contain_text("Stopped at the chosen answer length (256 tokens)")

        # Kept for this user across a reload; Medium lets the whole echo through.
        page.reload()
        expect(page.locator("#chat-view")).to_be_visible()
        expect(page.locator("#length-select")).to_have_value("short")
        open_options(page)
        page.select_option("#length-select", "medium")
        body = send(page, long_text)
        assert body["max_tokens"] == 1024
        answer = page.locator("#messages .msg-assistant").last
        assert answer.locator(".msg-body.answer").inner_text().split() == long_text.split()
        expect(answer).not_to_contain_text("Stopped at")
        shot(page, "options-length")
        page.select_option("#length-select", "long")
    finally:
        ctx.close()


def test_the_model_picker_shows_with_two_models_and_follows_the_conversation(
        browser: Browser, options_web: FakeWeb, people: dict[str, str],
        problems: Problems) -> None:
    ctx = browser.new_context(base_url=options_web.url, viewport=PHONE)

    def two_models(route: Route) -> None:
        resp = route.fetch()
        data = resp.json()
        data["data"].append({**data["data"][0], "id": "fake-model:ward-notes",
                             "parent": "fake-model"})
        route.fulfill(response=resp, json=data)

    ctx.route("**/v1/models", two_models)
    page = problems.watch(ctx.new_page())
    try:
        sign_in_chat(page, "op.phone", people["op.phone"])
        open_options(page)
        expect(page.locator("#model-field")).to_be_visible()
        expect(page.locator("#model-select option")).to_have_text(
            ["fake-model", "fake-model:ward-notes"])
        expect(page.locator("#model-select")).to_have_value("fake-model")
        title = "which model answers"
        body = send(page, title)
        assert body["model"] == "fake-model"

        # The adapter is chosen (and remembered); this fake serves none, so the server
        # refuses it, by name, and the message comes back to the box.
        page.select_option("#model-select", "fake-model:ward-notes")
        expect(page.locator("#options-summary")).to_contain_text("fake-model:ward-notes")
        body = send(page, "to the adapter")
        assert body["model"] == "fake-model:ward-notes"
        expect(page.locator("#chat-error")).to_contain_text("ward-notes")
        expect(page.locator("#composer-input")).to_have_value("to the adapter")
        page.reload()
        expect(page.locator("#chat-view")).to_be_visible()
        expect(page.locator("#model-select")).to_have_value("fake-model:ward-notes")

        # Opening the conversation selects the model of its last turn.
        page.click("#sidebar-toggle")
        page.locator(".conv-item .conv-open", has_text=title).click()
        expect(page.locator("#model-select")).to_have_value("fake-model")
        open_options(page)
        no_sideways_scroll(page)
        shot(page, "options-models-390")
    finally:
        ctx.close()


def test_the_screenshots_are_kept() -> None:
    art = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
    for name in ("admin-presets.png", "admin-presets-390.png", "chat-options-desktop.png",
                 "chat-options-phone.png", "chat-options-length.png",
                 "chat-options-models-390.png"):
        assert (art / name).stat().st_size > 0, name
