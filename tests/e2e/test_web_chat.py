"""The staff chat page (GET /) in a real browser (Debian's Chromium through Playwright).

Two daemons serve these tests:
  * the session `daemon` (real vLLM engine, real model) for the clinician's journey:
    log in, stream an answer, history, delete, quota, keyboard, Stop, log out;
  * a daemon over the FakeEngine in echo mode (`fake_web`) for deterministic checks:
    XSS payloads echoed back as "model output", security headers, cookies, error states.

Screenshots of each state go to test-artifacts/web/chat-*.png (desktop and 390 px wide).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import zoneinfo
from typing import Any, Iterator

import httpx
import pytest

from tests.e2e.conftest import Daemon, cli
from tests.e2e.web_fixtures import (  # noqa: F401  (fixtures)
    DESKTOP,
    PHONE,
    FakeWeb,
    _run,
    browser,
    fake_web,
    shot,
)
from tests.support.store_setup import add_users

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
       "object-src 'none'")
QUOTA_RE = re.compile(r"Requests left today: (\d+) of (\d+)")


# --------------------------------------------------------------------------- helpers


class Console:
    """Console messages and page errors of one page."""

    def __init__(self, page: Any) -> None:
        self.messages: list[str] = []
        page.on("console", lambda m: self.messages.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.messages.append(f"pageerror: {e}"))

    def csp_violations(self) -> list[str]:
        return [m for m in self.messages
                if "Content Security Policy" in m or "Refused to" in m]

    def page_errors(self) -> list[str]:
        return [m for m in self.messages if m.startswith("pageerror")]


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        yield ctx
    finally:
        ctx.close()


def login(page: Any, base: str, user: str, password: str) -> None:
    page.goto(base + "/")
    page.wait_for_selector("#login-view:not([hidden])")
    page.fill("#login-username", user)
    page.fill("#login-password", password)
    page.click("#login-submit")
    page.wait_for_selector("#chat-view:not([hidden]), #auditor-view:not([hidden])")


def wait_idle(page: Any, timeout_ms: float = 240_000) -> None:
    """Until the page is not generating (Send visible again)."""
    page.wait_for_function("() => document.body.dataset.busy !== 'true'", timeout=timeout_ms)


def send(page: Any, text: str, timeout_ms: float = 240_000) -> None:
    """Type `text`, press Enter, wait until this send finished (answer, error or stop)."""
    before = int(page.evaluate("document.body.dataset.sends || '0'"))
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")
    page.wait_for_function(f"() => Number(document.body.dataset.sends || 0) > {before}",
                           timeout=timeout_ms)


def quota(page: Any) -> tuple[int, int]:
    m = QUOTA_RE.search(page.text_content("#quota") or "")
    assert m, page.text_content("#quota")
    return int(m.group(1)), int(m.group(2))


def last_answer(page: Any) -> Any:
    return page.locator(".msg-assistant .answer").last


def new_user(daemon: Daemon, name: str, role: str = "user") -> str:
    res = cli("user", "add", name, "--role", role, env=daemon.env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["password"]


# --------------------------------------------------------------------------- real engine


def test_real_chat_journey(browser: Any, daemon: Daemon) -> None:
    """Log in, watch the answer stream in, find it in the history after a reload, delete it."""
    password = new_user(daemon, "web.nurse")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        console = Console(page)
        page.goto(daemon.url + "/")
        page.wait_for_selector("#login-view:not([hidden])")
        shot(page, "login-desktop")
        login(page, daemon.url, "web.nurse", password)
        shot(page, "empty-desktop")
        left, limit = quota(page)

        # Record every state of the answer bubble while the request is running.
        page.evaluate("""() => {
            window.__snapshots = [];
            new MutationObserver(() => {
                const a = document.querySelectorAll('.msg-assistant .answer');
                const el = a[a.length - 1];
                if (el && document.body.dataset.busy === 'true')
                    window.__snapshots.push(el.textContent);
            }).observe(document.getElementById('messages'),
                       {childList: true, subtree: true, characterData: true});
        }""")
        page.fill("#composer-input", "Say hello in one short sentence.")
        page.press("#composer-input", "Enter")
        page.wait_for_function("() => document.body.dataset.busy === 'true'", timeout=30_000)
        assert page.is_visible("#stop") and not page.is_visible("#send")
        polled = []
        for _ in range(200):
            if page.evaluate("document.body.dataset.busy") != "true":
                break
            polled.append(last_answer(page).text_content() or "")
            if len({p for p in polled if p}) >= 2 and len(polled) % 10 == 0:
                shot(page, "streaming-desktop")
            time.sleep(0.05)
        wait_idle(page)
        final = (last_answer(page).text_content() or "").strip()
        assert final, page.content()
        snaps = [s for s in page.evaluate("window.__snapshots") if s.strip()]
        distinct = list(dict.fromkeys(snaps + [p for p in polled if p.strip()]))
        assert len(distinct) >= 2, f"the answer did not stream: {distinct!r}"
        # It grew: every earlier state is a prefix-ish shorter version of the final text.
        assert len(distinct[0]) < len(final), distinct
        assert page.text_content(".msg-user .msg-body") == "Say hello in one short sentence."
        assert quota(page) == (left - 1, limit)
        shot(page, "answer-desktop")

        # The conversation is in the sidebar after a reload, and opening it shows the answer.
        page.reload()
        page.wait_for_selector("#chat-view:not([hidden])")
        page.wait_for_selector(".conv-item .conv-open")
        assert page.locator(".conv-item").count() == 1
        page.click(".conv-item .conv-open")
        page.wait_for_selector(".msg-assistant .answer")
        assert page.text_content(".msg-user .msg-body") == "Say hello in one short sentence."
        reopened = (last_answer(page).text_content() or "").strip()
        assert reopened and (reopened in final or final in reopened), (reopened, final)
        assert quota(page) == (left - 1, limit)  # from /auth/session after the reload
        shot(page, "history-desktop")

        # Same state at phone width: the sidebar hides behind a "Conversations" toggle.
        page.set_viewport_size(PHONE)
        assert page.is_visible("#sidebar-toggle")
        assert not page.is_visible("#sidebar")
        shot(page, "history-phone")
        page.click("#sidebar-toggle")
        assert page.is_visible("#sidebar")
        assert page.get_attribute("#sidebar-toggle", "aria-expanded") == "true"
        shot(page, "sidebar-phone")
        page.keyboard.press("Escape")
        assert not page.is_visible("#sidebar")
        page.set_viewport_size(DESKTOP)

        # Delete it (confirming the dialog): gone from the list and from the server.
        page.once("dialog", lambda d: d.accept())
        page.click(".conv-item .conv-menu-button")
        page.click(".conv-item .conv-delete")
        page.wait_for_function("() => document.querySelectorAll('.conv-item').length === 0")
        listed = page.request.get(daemon.url + "/v1/conversations")
        assert listed.status == 200 and listed.json()["data"] == []
        assert page.locator(".msg").count() == 0
        shot(page, "deleted-desktop")
        assert not console.csp_violations(), console.messages
        assert not console.page_errors(), console.messages
    finally:
        ctx.close()


def test_real_keyboard_stop_and_logout(browser: Any, daemon: Daemon) -> None:
    password = new_user(daemon, "web.doctor")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        console = Console(page)
        login(page, daemon.url, "web.doctor", password)

        # Shift+Enter makes a new line and sends nothing; Enter sends.
        box = page.locator("#composer-input")
        box.click()
        page.keyboard.type("First line")
        page.keyboard.press("Shift+Enter")
        page.keyboard.type("second line")
        assert box.input_value() == "First line\nsecond line"
        assert page.locator(".msg").count() == 0
        page.keyboard.press("Control+A")
        page.keyboard.type("Write a very long essay about the history of medicine, "
                           "with many sections.")

        # Enter sends; Stop aborts the long generation and keeps what arrived.
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.body.dataset.busy === 'true'", timeout=30_000)
        assert box.input_value() == ""
        page.wait_for_function(
            "() => (document.querySelector('.msg-assistant .answer')?.textContent || '').length > 0",
            timeout=120_000)
        shot(page, "generating-desktop")
        started = time.monotonic()
        page.click("#stop")
        wait_idle(page, timeout_ms=10_000)
        assert time.monotonic() - started < 10
        assert page.is_visible("#send") and not page.is_visible("#stop")
        assert "Stopped" in (page.text_content(".msg-assistant") or "")
        assert (last_answer(page).text_content() or "").strip()  # what arrived is kept
        assert page.locator(".msg-assistant .msg-stopped").is_visible()  # the mark
        shot(page, "stopped-desktop")
        page.set_viewport_size(PHONE)
        shot(page, "stopped-phone")
        page.set_viewport_size(DESKTOP)

        # The stopped first answer kept the new conversation: listed, marked after a reload,
        # and a follow-up question continues it.
        page.wait_for_selector(".conv-item.active", timeout=15_000)
        page.reload()
        page.wait_for_selector(".conv-item .conv-open")
        assert page.locator(".conv-item").count() == 1
        page.click(".conv-item .conv-open")
        page.wait_for_selector(".msg-assistant .msg-stopped")
        assert "Stopped" in (page.text_content(".msg-assistant .msg-stopped") or "")
        assert (last_answer(page).text_content() or "").strip()
        send(page, "Now say OK.")
        assert page.is_hidden("#chat-error"), page.text_content("#chat-error")
        assert page.locator(".msg-assistant").count() == 2
        assert page.locator(".msg-assistant").nth(1).locator(".msg-stopped").count() == 0
        assert (last_answer(page).text_content() or "").strip()
        assert page.locator(".conv-item").count() == 1
        conv = page.request.get(daemon.url + "/v1/conversations").json()["data"][0]["id"]
        turns = page.request.get(f"{daemon.url}/v1/conversations/{conv}").json()["turns"]
        assert [bool(t.get("stopped")) for t in turns] == [True, False]

        # The daemon is free for the next request.
        page.click("#logout")
        page.wait_for_selector("#login-view:not([hidden])")
        assert page.is_visible("#login-username")
        shot(page, "logged-out-desktop")
        page.set_viewport_size(PHONE)
        shot(page, "login-phone")
        # The cookie is gone server-side too: the session endpoint refuses.
        assert page.request.get(daemon.url + "/auth/session").status == 401
        assert not console.csp_violations(), console.messages
        assert not console.page_errors(), console.messages
    finally:
        ctx.close()
    # A stopped generation does not keep the engine busy.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.get(daemon.url + "/readyz", timeout=5).status_code == 200:
            break
        time.sleep(1)


def test_real_auditor_sees_a_note_instead_of_the_chat(browser: Any, daemon: Daemon) -> None:
    password = new_user(daemon, "web.auditor", role="auditor")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        login(page, daemon.url, "web.auditor", password)
        page.wait_for_selector("#auditor-view:not([hidden])")
        assert "Auditors use the admin console at /admin" in page.text_content("#auditor-note")
        assert not page.is_visible("#composer-input")
        shot(page, "auditor-desktop")
    finally:
        ctx.close()


# --------------------------------------------------------------------------- fake engine


XSS_PAYLOADS = [
    '<img src=x onerror="window.__xss=1">',
    "<script>window.__xss=1</script>",
    "[click](javascript:window.__xss=1)",
    "**bold**",
]


def test_echoed_xss_payloads_stay_text(browser: Any, fake_web: FakeWeb) -> None:
    password = fake_web.add_user("xss.nurse")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        console = Console(page)
        login(page, fake_web.url, "xss.nurse", password)
        for i, payload in enumerate(XSS_PAYLOADS):
            send(page, payload, timeout_ms=30_000)
            answer = last_answer(page)
            assert (answer.text_content() or "") == ("bold" if payload == "**bold**" else payload)
            assert page.evaluate("typeof window.__xss") == "undefined", payload
            assert answer.locator("img, script, iframe, object, embed").count() == 0
            assert page.locator(".msg-user .msg-body").nth(i).text_content() == payload
            for href in answer.locator("a").evaluate_all("els => els.map(a => a.href)"):
                assert not href.lower().startswith("javascript:"), href
        # The javascript: link was not made a link: clicking its text runs nothing.
        link_answer = page.locator(".msg-assistant .answer").nth(2)
        assert link_answer.locator("a").count() == 0
        link_answer.click()
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator(".msg-assistant .answer").nth(3).locator("strong").text_content() == "bold"
        # Nothing anywhere on the page came from the payloads.
        assert page.locator("#messages img, #messages script").count() == 0
        shot(page, "xss-desktop")
        # And after reopening the conversation from the stored history, the same holds.
        page.reload()
        page.wait_for_selector(".conv-item .conv-open")
        page.click(".conv-item .conv-open")
        page.wait_for_function("() => document.querySelectorAll('.msg-assistant').length === 4")
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator("#messages img, #messages script, #messages a").count() == 0
        assert page.locator(".msg-assistant strong").text_content() == "bold"
        assert not console.csp_violations(), console.messages
        assert not console.page_errors(), console.messages
    finally:
        ctx.close()


MARKDOWN_CASES = r"""async () => {
  const { renderMarkdown } = await import('/static/markdown.js');
  const html = (t) => { const d = document.createElement('div'); d.append(renderMarkdown(t)); return d; };
  const out = {};
  const links = {
    js: '[a](javascript:alert(1))', jsCase: '[a](JaVaScRiPt:alert(1))',
    jsTab: '[a](java\tscript:alert(1))', jsEnt: '[a](javascript&#58;alert(1))',
    data: '[a](data:text/html,<script>alert(1)</script>)', vb: '[a](vbscript:msgbox(1))',
    rel: '[a](/admin)', proto: '[a](//evil.example/x)', back: '[a](/\\evil.example)',
    ok: '[a](https://example.org/x?y=1)', mail: '[a](mailto:help@example.org)',
  };
  for (const [k, t] of Object.entries(links)) {
    const d = html(t);
    out[k] = [...d.querySelectorAll('a')].map((a) => a.getAttribute('href'));
  }
  const d = html('# Title\n\nSome *it* and **b** and `<b>x</b>`\nnext line\n\n- one\n- two\n\n1. first\n2. second\n\n```\n<script>alert(1)</script>\n```\n<div onclick="x()">raw</div>');
  out.tags = [...d.querySelectorAll('*')].map((e) => e.tagName.toLowerCase());
  out.code = d.querySelector('pre code').textContent;
  out.raw = d.lastChild.textContent;
  out.inline = d.querySelector('p code').textContent;
  return out;
}"""


def test_markdown_renderer(browser: Any, fake_web: FakeWeb) -> None:
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.goto(fake_web.url + "/")
        out = page.evaluate(MARKDOWN_CASES)
        for k in ("js", "jsCase", "jsTab", "jsEnt", "data", "vb", "rel", "proto", "back"):
            assert out[k] == [], (k, out[k])
        assert out["ok"] == ["https://example.org/x?y=1"]
        assert out["mail"] == ["mailto:help@example.org"]
        assert out["tags"] == ["h1", "p", "em", "strong", "code", "br", "ul", "li", "li", "ol",
                               "li", "li", "pre", "code", "p"], out["tags"]
        assert out["code"] == "<script>alert(1)</script>"
        assert out["inline"] == "<b>x</b>"
        assert out["raw"] == '<div onclick="x()">raw</div>'
    finally:
        ctx.close()


def test_security_headers_and_no_csp_violations(browser: Any, fake_web: FakeWeb) -> None:
    password = fake_web.add_user("csp.nurse")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        console = Console(page)
        resp = page.goto(fake_web.url + "/")
        assert resp is not None and resp.status == 200
        h = resp.headers
        assert h["content-security-policy"] == CSP
        assert "frame-ancestors 'none'" in h["content-security-policy"]
        assert h["x-content-type-options"] == "nosniff"
        assert h.get("referrer-policy")
        for path in ("/static/chat.js", "/static/markdown.js", "/static/chat.css"):
            r = page.request.get(fake_web.url + path)
            assert r.status == 200, path
            assert r.headers["x-content-type-options"] == "nosniff"
        login(page, fake_web.url, "csp.nurse", password)
        send(page, "Some **markdown** with `code` and [a link](https://example.org)",
             timeout_ms=30_000)
        assert last_answer(page).locator("a").get_attribute("href") == "https://example.org/"
        page.click("#logout")
        page.wait_for_selector("#login-view:not([hidden])")
        assert not console.csp_violations(), console.messages
        assert not console.page_errors(), console.messages
    finally:
        ctx.close()


def test_session_cookie_flags_and_csrf(browser: Any, fake_web: FakeWeb) -> None:
    password = fake_web.add_user("cookie.nurse")
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        requests: list[Any] = []
        page.on("request", lambda r: requests.append(r))
        login(page, fake_web.url, "cookie.nurse", password)
        cookies = {c["name"]: c for c in ctx.cookies()}
        c = cookies["deepseekd_session"]
        assert c["httpOnly"] is True
        assert c["sameSite"] == "Strict"
        assert c["path"] == "/"
        assert page.evaluate("document.cookie") == ""  # invisible to scripts
        send(page, "hello there", timeout_ms=30_000)
        send(page, "and again", timeout_ms=30_000)
        posts = [r for r in requests if r.method in ("POST", "PATCH", "DELETE")]
        assert posts
        for r in posts:
            if r.url.endswith("/auth/login"):
                continue
            assert r.headers.get("x-csrf-token"), r.url
        # Continuing a conversation sends the whole history and its id.
        chats = [r for r in posts if r.url.endswith("/v1/chat/completions")]
        first, second = chats[0].post_data_json, chats[1].post_data_json
        assert "conversation_id" not in first and first["stream"] is True
        assert second["conversation_id"]
        assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
        assert second["messages"][0]["content"] == "hello there"
        assert second["messages"][1]["content"] == "hello there"  # the echo
        assert second["messages"][2]["content"] == "and again"
        # A request without the token is refused by the server (the page never does that).
        assert page.request.post(fake_web.url + "/auth/logout").status == 403
    finally:
        ctx.close()


def test_rename_and_new_chat(browser: Any, fake_web: FakeWeb) -> None:
    password = fake_web.add_user("rename.nurse")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        login(page, fake_web.url, "rename.nurse", password)
        send(page, "first conversation", timeout_ms=30_000)
        page.wait_for_selector(".conv-item")
        page.click(".conv-item .conv-menu-button")
        page.click(".conv-item .conv-rename")
        page.fill(".conv-rename-form input", "Ward 3 handover")
        page.press(".conv-rename-form input", "Enter")
        page.wait_for_selector(".conv-open:has-text('Ward 3 handover')")
        listed = page.request.get(fake_web.url + "/v1/conversations").json()["data"]
        assert [c["title"] for c in listed] == ["Ward 3 handover"]
        page.click("#new-chat")
        assert page.locator(".msg").count() == 0
        send(page, "second conversation", timeout_ms=30_000)
        page.wait_for_function("() => document.querySelectorAll('.conv-item').length === 2")
        shot(page, "two-conversations-desktop")
    finally:
        ctx.close()


def test_error_states(browser: Any, fake_web: FakeWeb) -> None:
    """Daily quota exhausted, a session that ended, a wrong password."""
    password = fake_web.add_user("quota.nurse", daily_request_limit=1)
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        page.goto(fake_web.url + "/")
        page.wait_for_selector("#login-view:not([hidden])")
        page.fill("#login-username", "quota.nurse")
        page.fill("#login-password", "wrong-password")
        page.click("#login-submit")
        page.wait_for_selector("#login-error:not([hidden])")
        assert "Wrong username or password" in page.text_content("#login-error")

        login(page, fake_web.url, "quota.nurse", password)
        assert quota(page) == (1, 1)
        send(page, "one", timeout_ms=30_000)
        assert quota(page) == (0, 1)
        page.fill("#composer-input", "two")
        page.press("#composer-input", "Enter")
        page.wait_for_selector("#chat-error:not([hidden])")
        text = page.text_content("#chat-error") or ""
        assert re.search(r"Daily limit reached; resets at \d\d:\d\d", text), text
        assert page.locator("#composer-input").input_value() == "two"  # kept for later
        shot(page, "quota-desktop")

        # The session ends (cookie gone): the next call shows the login form and says why.
        ctx.clear_cookies()
        page.click("#new-chat")
        page.fill("#composer-input", "three")
        page.press("#composer-input", "Enter")
        page.wait_for_selector("#login-view:not([hidden])")
        assert "Your session ended" in page.text_content("#login-notice")
        shot(page, "session-ended-desktop")
    finally:
        ctx.close()


# --------------------------------------------------------------------------- usage and tools

USED_RE = re.compile(r"Requests left today: \d+ of \d+ \((\d+) used\)")
KOLKATA = "Asia/Kolkata"  # UTC+05:30: a local reset time that no whole-hour zone shows


def used(page: Any) -> int:
    text = page.text_content("#quota") or ""
    m = USED_RE.search(text)
    assert m, text
    return int(m.group(1))


def test_usage_display_after_each_answer(browser: Any, fake_web: FakeWeb) -> None:
    """The top bar shows today's usage from GET /v1/me/usage (requests used and left, tokens,
    the reset in the user's own time zone), read again after each answer."""
    password = fake_web.add_user("usage.nurse")
    ctx = browser.new_context(viewport=DESKTOP, timezone_id=KOLKATA)
    try:
        page = ctx.new_page()
        console = Console(page)
        login(page, fake_web.url, "usage.nurse", password)
        page.wait_for_function(
            "() => document.getElementById('quota').textContent.includes('(0 used)')")
        assert "Tokens today: 0" in (page.text_content("#quota") or "")
        send(page, "one two three", timeout_ms=30_000)
        assert used(page) == 1
        send(page, "four five", timeout_ms=30_000)
        assert used(page) == 2
        usage = page.request.get(fake_web.url + "/v1/me/usage").json()
        assert usage["requests"]["used"] == 2 and usage["tokens"]["used"] > 0
        left, limit = quota(page)
        assert (left, limit) == (usage["requests"]["remaining"], usage["requests"]["limit"])
        text = page.text_content("#quota") or ""
        assert f"Tokens today: {usage['tokens']['used']:,}" in text, text
        reset = dt.datetime.fromtimestamp(usage["reset_at"], zoneinfo.ZoneInfo(KOLKATA))
        assert f"resets at {reset:%H:%M}" in text, text
        shot(page, "usage-desktop")
        # Reading the usage (the page on a reload, the call above) counted nothing.
        page.reload()
        page.wait_for_function(
            "() => document.getElementById('quota').textContent.includes('(2 used)')")
        assert quota(page) == (left, limit)
        assert not console.csp_violations(), console.messages
        assert not console.page_errors(), console.messages
    finally:
        ctx.close()


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "required": ["city"],
                       "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
    },
}
# The echo engine answers the question: under the named tool choice, that is the arguments.
ARGUMENTS = '{"city": "Oslo <img src=x onerror=window.__xss=1>", "days": 2}'
RESULT = '{"temp_c": -3, "sky": "<b>snow</b>"}'


def tool_conversation(fake_web: FakeWeb, name: str) -> tuple[str, str, str]:
    """A conversation with a tool call and its result, made through the API as a script
    would; (the user's password, the conversation id, the call's id)."""
    [user] = _run(add_users(fake_web.db_url, fake_web.data_dir, [name]))
    assert user.password
    auth = {"Authorization": f"Bearer {user.api_key}"}
    ask = {"role": "user", "content": ARGUMENTS}
    first = httpx.post(fake_web.url + "/v1/chat/completions", headers=auth, timeout=30, json={
        "messages": [ask], "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    assert first.status_code == 200, first.text
    call = first.json()["choices"][0]["message"]
    assert call["content"] is None and call["tool_calls"][0]["function"]["arguments"] == ARGUMENTS
    call_id, cid = call["tool_calls"][0]["id"], first.headers["X-Conversation-Id"]
    second = httpx.post(fake_web.url + "/v1/chat/completions", headers=auth, timeout=30, json={
        "conversation_id": cid, "messages": [
            ask, call, {"role": "tool", "tool_call_id": call_id, "content": RESULT},
            {"role": "user", "content": "thanks"}]})
    assert second.status_code == 200, second.text
    return user.password, cid, call_id


def test_tool_calls_are_shown_as_text(browser: Any, fake_web: FakeWeb) -> None:
    """A conversation with tool calls (made through the API) opens readably: the call's name
    and arguments, the result, no "null"; nothing in them runs; it goes on from the page."""
    password, cid, call_id = tool_conversation(fake_web, "tool.nurse")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        console = Console(page)
        login(page, fake_web.url, "tool.nurse", password)
        page.wait_for_selector(".conv-item .conv-open")
        page.click(".conv-item .conv-open")
        page.wait_for_selector(".msg-tool")
        title = page.text_content(".tool-call .tool-call-title") or ""
        assert title == f"Called get_weather ({call_id})", title
        pretty = json.dumps(json.loads(ARGUMENTS), indent=2)
        assert page.text_content(".tool-call pre") == pretty
        assert page.text_content(".msg-tool .tool-result-title") == (
            f"Result of {call_id} (get_weather):")
        assert page.text_content(".msg-tool pre") == json.dumps(json.loads(RESULT), indent=2)
        assert not page.is_visible(".msg-assistant .answer >> nth=0")  # no text, just the call
        assert (last_answer(page).text_content() or "") == "thanks"
        messages = page.text_content("#messages") or ""
        assert "null" not in messages, messages
        assert page.locator("#messages img, #messages script, #messages b").count() == 0
        assert page.evaluate("typeof window.__xss") == "undefined"
        shot(page, "tool-calls-desktop")

        # The page resends the calls and results as stored: the conversation goes on.
        send(page, "and tomorrow?", timeout_ms=30_000)
        assert (last_answer(page).text_content() or "") == "and tomorrow?"
        assert page.locator("#chat-error:not([hidden])").count() == 0
        stored = page.request.get(f"{fake_web.url}/v1/conversations/{cid}").json()
        assert [m["role"] for m in stored["messages"]] == [
            "user", "assistant", "tool", "user", "assistant", "user", "assistant"]
        assert not console.csp_violations(), console.messages
        assert not console.page_errors(), console.messages
    finally:
        ctx.close()
