"""How the chat page shows answers, in a real browser (Debian's Chromium through Playwright)
against the real app over the FakeEngine as an echoing reasoning model: each answer is a few
reasoning words, then the user's message back, whitespace and newlines kept, so a test makes
the "model" answer with exactly the Markdown it sends.

  * GFM tables (markdown.js): header cells, alignment classes (never styles), inline Markdown
    and escaped pipes in cells, no HTML from cells; a table that streams in renders at every
    step; a wide table scrolls in its own box, not the page;
  * "Copy code" on every code block and "Copy answer" under every answer put exactly the code
    and the answer's Markdown source on the clipboard, and say so; a refusal is explained;
  * dark mode: follows prefers-color-scheme, the Theme control overrides it and is remembered,
    applied before the page body exists (no flash); text contrast AA in both themes;
  * timestamps on messages, the reasoning collapsed with its measured duration, the "Stopped"
    mark on a stopped answer;
  * no CSP violation or page error anywhere.

Screenshots: test-artifacts/web/chat-light.png, chat-dark.png, chat-light-390.png and
chat-dark-390.png (a table, code, reasoning and a stopped answer), and chat-table-390.png.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.web_fixtures import (  # noqa: F401  (fixtures)
    DESKTOP,
    PHONE,
    FakeWeb,
    browser,
    send,
    shot,
    sign_in_chat,
    start_fake_web,
)

THINK_WORDS = 3  # each answer starts with this many reasoning words: "r0 r1 r2"


@pytest.fixture(scope="module")
def echo_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeWeb]:
    web = start_fake_web(tmp_path_factory.mktemp("render-web"),
                         DEEPSEEKD_TEST_FAKE_TOKEN_DELAY="0.02",
                         DEEPSEEKD_TEST_FAKE_ECHO_EXACT="1",
                         DEEPSEEKD_TEST_FAKE_THINK=str(THINK_WORDS),
                         DEEPSEEKD_TEST_FAKE_MAX_MODEL_LEN="4096")
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


def reopen(page: Any) -> None:
    """Reload and open the (only) conversation from the stored history."""
    page.reload()
    page.wait_for_selector(".conv-item .conv-open")
    page.click(".conv-item .conv-open")
    page.wait_for_selector(".msg-assistant .answer")


def no_sideways_scroll(page: Any) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the page is {overflow}px wider than the window"


# --------------------------------------------------------------------------- tables

TABLE = (
    "| Drug | Dose | Route |\n"
    "| :--- | :---: | ---: |\n"
    "| **Paracetamol** | 1 g | oral |\n"
    "| Heparin `a \\| b` | 5000 IU | s.c. |\n"
    "| short row |\n"
    "| one | two | three | extra |\n"
)

TABLE_CASES = r"""async (table) => {
  const { renderMarkdown } = await import('/static/markdown.js');
  const render = (t) => {
    const d = document.createElement('div');
    d.append(renderMarkdown(t));
    return d;
  };
  const cells = (row) => [...row.children].map((c) => ({
    tag: c.tagName.toLowerCase(), text: c.textContent, cls: c.className,
    scope: c.getAttribute('scope'), html: [...c.children].map((e) => e.tagName.toLowerCase()),
  }));
  const out = {};
  const d = render('Before the table\n' + table + '\nAfter it');
  const t = d.querySelector('table');
  out.blocks = [...d.children]
    .map((e) => e.tagName.toLowerCase() + (e.className ? '.' + e.className : ''));
  out.wrap = ['role', 'aria-label', 'tabindex'].map((a) => t.parentElement.getAttribute(a));
  out.head = [...t.tHead.rows].map(cells);
  out.body = [...t.tBodies[0].rows].map(cells);
  out.styled = d.querySelectorAll('[style]').length;
  // Not tables: a delimiter row with another cell count, one without a pipe, a lone header.
  out.notTables = ['| a | b |\n| --- |\n| 1 | 2 |', 'a | b\n--- ---', '| a | b |',
    '| a |\n| :-: | --- |'].map((s) => render(s).querySelectorAll('table').length);
  out.pipeEscapes = [...render('| x |\n|---|\n| a \\| b |\n| c \\\\| d |').querySelectorAll('td')]
    .map((c) => c.textContent);
  const x = render('| <img src=x onerror="window.__xss=1"> | [a](javascript:window.__xss=1) |\n'
    + '| --- | --- |\n| <script>window.__xss=1</script> | `<b>x</b>` |');
  out.xss = { text: [...x.querySelectorAll('th, td')].map((c) => c.textContent),
    elements: x.querySelectorAll('img, script, a, b').length };
  return out;
}"""


def test_gfm_tables_in_the_renderer(browser: Any, echo_web: FakeWeb) -> None:
    """markdown.js turns GFM pipe tables into <table> DOM: header cells with scope, one class
    per aligned cell, inline Markdown in cells, escaped pipes, GFM's row padding; payloads in
    cells stay text; lines that are not a table stay a paragraph."""
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        console = Console(page)
        page.goto(echo_web.url + "/")
        out = page.evaluate(TABLE_CASES, TABLE)
        assert out["blocks"] == ["p", "div.md-table-wrap", "p"], out["blocks"]
        assert out["wrap"] == ["region", "Table", "0"]  # scrollable, so reachable by keyboard
        [head] = out["head"]
        assert [(c["tag"], c["text"], c["cls"], c["scope"]) for c in head] == [
            ("th", "Drug", "md-align-left", "col"), ("th", "Dose", "md-align-center", "col"),
            ("th", "Route", "md-align-right", "col")]
        body = out["body"]
        assert [[c["text"] for c in row] for row in body] == [
            ["Paracetamol", "1 g", "oral"],
            ["Heparin a | b", "5000 IU", "s.c."],
            ["short row", "", ""],  # missing cells are empty
            ["one", "two", "three"],  # extra cells are dropped
        ]
        assert all(c["tag"] == "td" for row in body for c in row)
        assert [c["cls"] for c in body[0]] == ["md-align-left", "md-align-center", "md-align-right"]
        assert body[0][0]["html"] == ["strong"] and body[1][0]["html"] == ["code"]
        assert out["styled"] == 0  # alignment is a class, never a style attribute
        assert out["notTables"] == [0, 0, 0, 0]
        assert out["pipeEscapes"] == ["a | b", "c \\"], out["pipeEscapes"]
        assert out["xss"]["text"] == ['<img src=x onerror="window.__xss=1">',
                                      "[a](javascript:window.__xss=1)",
                                      "<script>window.__xss=1</script>", "<b>x</b>"]
        assert out["xss"]["elements"] == 0
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert not console.problems, console.problems
    finally:
        ctx.close()


STREAM_STEPS = r"""async (table) => {
  // Render every prefix of the text, as a streaming answer does, and describe each step.
  const { renderMarkdown } = await import('/static/markdown.js');
  const steps = [];
  for (let n = 1; n <= table.length; n += 1) {
    const d = document.createElement('div');
    d.append(renderMarkdown(table.slice(0, n)));
    const t = d.querySelector('table');
    steps.push({ n, tables: d.querySelectorAll('table').length,
      head: t ? [...t.tHead.rows[0].cells].map((c) => c.textContent) : null,
      rows: t && t.tBodies[0] ? t.tBodies[0].rows.length : 0 });
  }
  return steps;
}"""


def test_a_streaming_table_renders_at_every_step(browser: Any, echo_web: FakeWeb) -> None:
    """Every prefix of a table renders without an error: no table until the delimiter row has
    as many cells as the header, then one table whose header stays and whose rows only grow."""
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        console = Console(page)
        page.goto(echo_web.url + "/")
        steps = page.evaluate(STREAM_STEPS, TABLE)
        header_end = TABLE.index("\n") + 1
        first_table = next(s["n"] for s in steps if s["tables"])
        # "| :--- | :---: |" is a two-cell delimiter: the third cell makes it a table.
        assert first_table == TABLE.index("| ---:", header_end) + 3, (first_table, TABLE)
        rows = 0
        for s in steps[first_table - 1:]:
            assert s["tables"] == 1 and s["head"] == ["Drug", "Dose", "Route"], s
            assert s["rows"] >= rows, s
            rows = s["rows"]
        assert rows == 4
        assert not console.problems, console.problems
    finally:
        ctx.close()


WIDE_TABLE = ("| " + " | ".join(f"Column{k}" for k in range(12)) + " |\n"
              + "|" + "---|" * 12 + "\n"
              + "| " + " | ".join(f"value-{k}-longer" for k in range(12)) + " |\n")

CODE = 'def dose(kg):\n    return kg * 15  # mg | <script>alert(1)</script>\n\n\tprint("tab")'

ANSWER = (
    "Dosing **summary**:\n\n" + TABLE + "\n"
    + "```python\n" + CODE + "\n```\n\n"
    + "A payload outside code: <img src=x onerror=\"window.__xss=1\">"
)

RECORD_TABLES = """() => {
    window.__tableRows = [];
    new MutationObserver(() => {
        if (document.body.dataset.busy !== 'true') return;
        const t = [...document.querySelectorAll('.msg-assistant .answer table')].pop();
        window.__tableRows.push(t && t.tBodies[0] ? t.tBodies[0].rows.length : -1);
    }).observe(document.getElementById('messages'), {childList: true, subtree: true});
}"""


def test_tables_and_code_in_an_answer(browser: Any, echo_web: FakeWeb) -> None:
    """An answer with a table and a code block streams in and ends as a <table> and a code
    block with its copy bar; nothing in it becomes HTML; at 390 px a wide table scrolls inside
    its own box and the page does not."""
    password = echo_web.add_user("table.nurse")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        console = Console(page)
        sign_in_chat(page, "table.nurse", password, echo_web.url)
        page.evaluate(RECORD_TABLES)
        send(page, ANSWER)
        answer = page.locator(".msg-assistant .answer").last
        assert answer.locator("table").count() == 1
        assert answer.locator("thead th").all_text_contents() == ["Drug", "Dose", "Route"]
        assert answer.locator("tbody tr").count() == 4
        assert answer.locator("th.md-align-center, td.md-align-center").count() == 5
        assert answer.locator("pre code").text_content() == CODE
        assert answer.locator(".code-block .code-lang").text_content() == "python"
        assert answer.locator(".code-block .copy-code").text_content() == "Copy code"
        assert answer.locator("img, script").count() == 0
        assert page.evaluate("typeof window.__xss") == "undefined"
        # While it streamed, the table was shown with fewer rows, then more: never broken.
        seen = [n for n in page.evaluate("window.__tableRows") if n >= 0]
        assert seen and seen == sorted(seen) and max(seen) <= 4, seen
        assert min(seen) < 4, f"the table did not render progressively: {seen}"

        # The same after reopening it from the stored history.
        reopen(page)
        answer = page.locator(".msg-assistant .answer").last
        assert answer.locator("tbody tr").count() == 4
        assert answer.locator("pre code").text_content() == CODE

        # A wide table at phone width: its box scrolls, the page does not.
        page.click("#new-chat")
        send(page, WIDE_TABLE)
        page.set_viewport_size(PHONE)
        wrap = page.locator(".msg-assistant .md-table-wrap").last
        sizes = wrap.evaluate("el => [el.scrollWidth, el.clientWidth]")
        assert sizes[0] > sizes[1], sizes
        no_sideways_scroll(page)
        wrap.focus()  # reachable by keyboard, and arrow keys scroll it
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "() => [...document.querySelectorAll('.md-table-wrap')].pop().scrollLeft > 0")
        shot(page, "table-390")
        assert not console.problems, console.problems
    finally:
        ctx.close()


# --------------------------------------------------------------------------- copying

RECORD_LABELS = """() => {
    window.__labels = [];
    new MutationObserver(() => {
        for (const b of document.querySelectorAll('.copy-code, .copy-answer'))
            window.__labels.push(b.textContent);
    }).observe(document.getElementById('messages'),
               {childList: true, subtree: true, characterData: true});
}"""


def clipboard(page: Any) -> str:
    return page.evaluate("navigator.clipboard.readText()")


def test_copy_code_and_copy_answer(browser: Any, echo_web: FakeWeb) -> None:
    """"Copy code" puts exactly the code on the clipboard, "Copy answer" the answer's Markdown
    source (also after reopening the conversation); the buttons say "Copied" and a live region
    announces it; keyboard works; while streaming there is no "Copy answer" yet."""
    password = echo_web.add_user("copy.nurse")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=echo_web.url)
        page = ctx.new_page()
        console = Console(page)
        sign_in_chat(page, "copy.nurse", password, echo_web.url)
        page.evaluate(RECORD_LABELS)
        page.evaluate("navigator.clipboard.writeText('before')")
        # While the answer streams in, it has no "Copy answer" button yet.
        page.fill("#composer-input", ANSWER)
        page.press("#composer-input", "Enter")
        page.wait_for_selector(".msg-assistant .answer table")
        if page.evaluate("document.body.dataset.busy") == "true":
            assert page.locator(".msg-assistant .msg-actions").is_hidden()
        page.wait_for_function("() => Number(document.body.dataset.sends || 0) >= 1")
        bubble = page.locator(".msg-assistant").last

        bubble.locator(".copy-code").click()
        page.wait_for_function("() => window.__labels.includes('Copied')")
        assert clipboard(page) == CODE
        page.wait_for_function(
            "() => document.getElementById('copy-status').textContent === "
            "'Code copied to the clipboard.'")

        copy_answer = bubble.locator(".msg-actions .copy-answer")
        assert copy_answer.is_visible() and copy_answer.text_content() == "Copy answer"
        copy_answer.focus()
        page.keyboard.press("Enter")
        page.wait_for_function(
            "() => document.getElementById('copy-status').textContent === "
            "'Answer copied to the clipboard.'")
        assert clipboard(page) == ANSWER  # the Markdown source, not the rendered text
        assert "r0" not in clipboard(page)  # the reasoning is not part of the answer

        # From the stored history: the same source.
        page.evaluate("navigator.clipboard.writeText('before')")
        reopen(page)
        page.locator(".msg-assistant .copy-answer").last.click()
        page.wait_for_function("async () => (await navigator.clipboard.readText()) !== 'before'")
        assert clipboard(page) == ANSWER
        assert not console.problems, console.problems
    finally:
        ctx.close()


def test_a_refused_copy_is_explained(browser: Any, echo_web: FakeWeb) -> None:
    """When the browser refuses the clipboard (permission denied), the page says so and how to
    copy by hand; the button does not claim "Copied"."""
    password = echo_web.add_user("refused.nurse")
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        console = Console(page)
        sign_in_chat(page, "refused.nurse", password, echo_web.url)
        send(page, "```\nx = 1\n```")
        # Deny the clipboard to this page's browser context, as a site policy or the user
        # would (Chromium's own permission setting, through the DevTools protocol).
        cdp = ctx.new_cdp_session(page)
        context_id = cdp.send("Target.getTargetInfo")["targetInfo"]["browserContextId"]
        cdp.send("Browser.setPermission", {"browserContextId": context_id,
                                           "origin": echo_web.url,
                                           "permission": {"name": "clipboard-write"},
                                           "setting": "denied"})
        assert page.evaluate("navigator.permissions.query({name: 'clipboard-write'})"
                             ".then((p) => p.state)") == "denied"
        page.evaluate(RECORD_LABELS)
        page.locator(".msg-assistant .copy-code").click()
        page.wait_for_selector("#chat-error:not([hidden])")
        assert "Could not copy" in (page.text_content("#chat-error") or "")
        assert "Ctrl+C" in (page.text_content("#chat-error") or "")
        assert "Copied" not in page.evaluate("window.__labels")
        assert page.locator(".msg-assistant .copy-code").text_content() == "Copy code"
        assert not console.problems, console.problems
    finally:
        ctx.close()


# --------------------------------------------------------------------------- themes

SEEN_AT_BODY = """() => {
    // Runs before any script of the page: the theme as it was when <body> was created.
    window.__themeAtBody = 'no body seen';
    new MutationObserver((records, obs) => {
        if (!document.body) return;
        window.__themeAtBody = document.documentElement.dataset.theme || 'system';
        obs.disconnect();
    }).observe(document, {childList: true, subtree: true});
}"""

CUSTOM_PROPERTIES = """() => {
    const style = getComputedStyle(document.documentElement);
    const names = [...document.styleSheets].flatMap((s) => [...s.cssRules])
        .flatMap((r) => r.cssRules ? [...r.cssRules] : [r])
        .filter((r) => r.style).flatMap((r) => [...r.style].filter((p) => p.startsWith('--')));
    return Object.fromEntries([...new Set(names)].sort()
        .map((n) => [n, style.getPropertyValue(n).trim()]));
}"""

BG = "getComputedStyle(document.body).backgroundColor"
LIGHT_BG, DARK_BG = "rgb(246, 247, 249)", "rgb(17, 20, 24)"


def test_dark_mode_follows_the_system_and_the_choice_is_remembered(
        browser: Any, echo_web: FakeWeb) -> None:
    """With "System" the page follows prefers-color-scheme, live; a choice of Light or Dark
    overrides it, survives a reload and is applied before the body exists (no flash); the
    forced dark theme has exactly the values of the system's dark theme."""
    ctx = browser.new_context(viewport=DESKTOP, color_scheme="dark")
    try:
        ctx.add_init_script(script=f"({SEEN_AT_BODY})()")
        page = ctx.new_page()
        console = Console(page)
        page.goto(echo_web.url + "/")
        page.wait_for_selector("#login-view:not([hidden])")
        assert page.evaluate(BG) == DARK_BG
        assert page.input_value("#theme-select") == "system"
        system_dark = page.evaluate(CUSTOM_PROPERTIES)
        page.emulate_media(color_scheme="light")
        page.wait_for_function(f"() => {BG} === '{LIGHT_BG}'")
        light = page.evaluate(CUSTOM_PROPERTIES)
        assert light["--bg"] != system_dark["--bg"] and len(light) == len(system_dark) > 20

        page.select_option("#theme-select", "dark")  # the system says light
        assert page.evaluate(BG) == DARK_BG
        assert page.evaluate(CUSTOM_PROPERTIES) == system_dark
        page.reload()
        page.wait_for_selector("#login-view:not([hidden])")
        assert page.evaluate("window.__themeAtBody") == "dark"
        assert page.evaluate(BG) == DARK_BG and page.input_value("#theme-select") == "dark"

        page.emulate_media(color_scheme="dark")
        page.select_option("#theme-select", "light")  # the system says dark
        assert page.evaluate(BG) == LIGHT_BG
        page.reload()
        page.wait_for_selector("#login-view:not([hidden])")
        assert page.evaluate("window.__themeAtBody") == "light"
        assert page.evaluate(BG) == LIGHT_BG and page.input_value("#theme-select") == "light"
        assert page.evaluate("localStorage.getItem('deepseekd.theme')") == "light"

        page.select_option("#theme-select", "system")  # back to the system (dark)
        assert page.evaluate(BG) == DARK_BG
        assert page.evaluate("localStorage.getItem('deepseekd.theme')") is None
        page.reload()
        page.wait_for_selector("#login-view:not([hidden])")
        assert page.evaluate("window.__themeAtBody") == "system"
        assert page.evaluate(BG) == DARK_BG
        assert not console.problems, console.problems
    finally:
        ctx.close()


LOW_CONTRAST = """() => {
  // Every visible element with text of its own: its colour against the first opaque
  // background behind it (WCAG 2 relative luminance). Disabled controls are exempt.
  const rgb = (c) => {
    const m = /rgba?\\(([^)]+)\\)/.exec(c);
    if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const lum = ({ r, g, b }) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c && c.a === 1) return c;
    }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  const failures = [];
  let checked = 0;
  for (const el of document.querySelectorAll('body *')) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || el.tagName === 'OPTION' || el.closest('.sr-only, .skip-link, [disabled]')) continue;
    if (!el.checkVisibility({ opacityProperty: true, visibilityProperty: true })) continue;
    const style = getComputedStyle(el);
    const fg = rgb(style.color);
    const bg = background(el);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    checked += 1;
    if (ratio < (large ? 3 : 4.5)) {
      const what = `${el.tagName.toLowerCase()}.${el.className}`;
      failures.push(`${what} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
    }
  }
  return { checked, failures };
}"""


# --------------------------------------------------------------------------- message details

LONG = " ".join(f"word{k}" for k in range(150))  # 3 s at 0.02 s a token: time to press Stop
TALL = {"width": 1280, "height": 1500}  # the desktop screenshots: the whole conversation

SCROLL_TO_FIRST_ANSWER = """() => {
    const box = document.getElementById('messages');
    const first = document.querySelector('.msg-assistant');
    box.scrollTop += first.getBoundingClientRect().top - box.getBoundingClientRect().top - 8;
}"""


def themes_pass_contrast_and_are_shot(page: Any) -> None:
    """In the light and the dark theme (from the system): no text below WCAG AA, the phone
    width does not scroll sideways; screenshots chat-<theme>.png and chat-<theme>-390.png."""
    for theme in ("light", "dark"):
        page.emulate_media(color_scheme=theme)
        page.wait_for_function(f"() => {BG} === '{LIGHT_BG if theme == 'light' else DARK_BG}'")
        for size, name in ((TALL, theme), (PHONE, f"{theme}-390")):
            page.set_viewport_size(size)
            page.evaluate(SCROLL_TO_FIRST_ANSWER)
            contrast = page.evaluate(LOW_CONTRAST)
            assert contrast["checked"] > 40 and not contrast["failures"], (name, contrast)
            no_sideways_scroll(page)
            shot(page, name)
    page.set_viewport_size(DESKTOP)


def test_times_reasoning_stopped_mark_contrast_and_screenshots(
        browser: Any, echo_web: FakeWeb) -> None:
    """Each message shows its time (<time datetime> with the full date as its title; after a
    reopen, the stored turn's time); the reasoning is collapsed and says how long it took; a
    stopped answer is marked; all text passes WCAG AA contrast in both themes; screenshots of
    both themes at desktop and phone width."""
    password = echo_web.add_user("times.nurse")
    ctx = browser.new_context(viewport=DESKTOP, color_scheme="light")
    try:
        page = ctx.new_page()
        console = Console(page)
        sign_in_chat(page, "times.nurse", password, echo_web.url)
        before = dt.datetime.now(dt.UTC).replace(microsecond=0)
        send(page, ANSWER)
        after = dt.datetime.now(dt.UTC)
        for sel in (".msg-user .msg-label time", ".msg-assistant .msg-label time"):
            t = page.locator(sel).last
            when = dt.datetime.fromisoformat(t.get_attribute("datetime").replace("Z", "+00:00"))
            assert before <= when <= after, (sel, when, before, after)
            assert str(when.astimezone().year) in (t.get_attribute("title") or "")
            assert re.search(r"\d\d?:\d\d", t.text_content() or ""), t.text_content()

        reasoning = page.locator(".msg-assistant details.reasoning").last
        assert reasoning.is_visible() and reasoning.get_attribute("open") is None  # collapsed
        summary = reasoning.locator("summary").text_content() or ""
        assert re.fullmatch(r"Reasoning \(took (under 1 s|\d+ s|\d+ min \d+ s)\)", summary), summary
        assert reasoning.locator(".reasoning-body").is_hidden()
        reasoning.locator("summary").click()
        assert reasoning.locator(".reasoning-body").text_content() == "r0 r1 r2"

        # A stopped answer: marked, and still timed.
        page.fill("#composer-input", LONG)
        page.press("#composer-input", "Enter")
        page.wait_for_function("() => /word3/.test([...document.querySelectorAll("
                               "'.msg-assistant .answer')].pop().textContent)")
        page.click("#stop")
        mark = page.locator(".msg-assistant").last.locator(".msg-stopped")
        mark.wait_for()
        assert "Stopped" in (mark.text_content() or "")
        assert page.locator(".msg-assistant").last.locator(".msg-label time").count() == 1
        page.wait_for_function("() => document.body.dataset.busy !== 'true'")
        themes_pass_contrast_and_are_shot(page)

        # Reopened: the times are the stored turns' times; the mark is still there.
        conv_id = page.request.get(echo_web.url + "/v1/conversations").json()["data"][0]["id"]
        page.wait_for_function(  # the server has stored the stopped turn
            f"async () => (await (await fetch('/v1/conversations/{conv_id}')).json())"
            ".turns.length === 2")
        reopen(page)
        page.wait_for_function("() => document.querySelectorAll('.msg-assistant').length === 2")
        turns = page.request.get(f"{echo_web.url}/v1/conversations/{conv_id}").json()["turns"]
        stored = [dt.datetime.fromtimestamp(t["created_at"], dt.UTC) for t in turns]
        for sel in (".msg-user", ".msg-assistant"):
            shown = [dt.datetime.fromisoformat(s.replace("Z", "+00:00")) for s in
                     page.locator(f"{sel} .msg-label time").evaluate_all(
                         "els => els.map((e) => e.getAttribute('datetime'))")]
            gaps = [abs((a - b).total_seconds()) for a, b in zip(shown, stored, strict=True)]
            assert len(gaps) == 2 and max(gaps) < 0.001, (sel, shown, stored)
        assert page.locator(".msg-assistant").nth(1).locator(".msg-stopped").is_visible()
        assert page.locator(".msg-assistant").nth(0).locator(".msg-stopped").count() == 0
        # Stored reasoning has no measured duration: just "Reasoning".
        assert page.locator(".msg-assistant summary").first.text_content() == "Reasoning"
        assert not console.problems, console.problems
    finally:
        ctx.close()
