"""The chat page's day-one features against the real daemon, the real vLLM engine and the real
embedded model (the session `daemon`), as a clinician clicks through them:

* the automatic title: the model names the new chat (not the first message any more);
* Regenerate: the last answer is asked again and replaces the stored one (still one turn);
* Edit and resend: the question is changed, the later turns are replaced, the stored request
  is the edited one;
* a system prompt from the Options and the Short answer length reach the model (stored as the
  first message of the request; the answer is at most 256 tokens);
* My data's JSON download holds the conversation as it now is.

Over the FakeEngine the same features are checked in detail (test_web_chat_edit.py,
test_web_chat_options.py, test_web_mydata.py); here it is the engine's real text and token
counts that go through them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.e2e import web_fixtures
from tests.e2e.conftest import Daemon
from tests.e2e.test_web_chat import Console, login, new_user, send, wait_idle
from tests.e2e.web_fixtures import DESKTOP, shot

FIRST = "What is the capital of France? Answer in one word."
EDITED = "What is the capital of Italy? Answer in one word."
SYSTEM = "You are a careful ward assistant. Answer briefly."
chromium = web_fixtures.browser  # the module's Chromium (a fixture, under this name here)


def stored(page: Any, base: str) -> dict[str, Any]:
    [conv] = page.request.get(base + "/v1/conversations").json()["data"]
    return page.request.get(f"{base}/v1/conversations/{conv['id']}").json()


def wait_title(page: Any, base: str, first: str, timeout_s: float = 120) -> str:
    """The conversation's title once the model named it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        title = stored(page, base)["title"]
        if title != first[:80]:
            return str(title)
        time.sleep(0.5)
    raise AssertionError(f"no automatic title after {timeout_s} s")


def test_real_title_regenerate_edit_options_and_export(chromium: Any, daemon: Daemon) -> None:
    password = new_user(daemon, "web.dayone")
    ctx = chromium.new_context(viewport=DESKTOP, accept_downloads=True)
    try:
        page = ctx.new_page()
        console = Console(page)
        login(page, daemon.url, "web.dayone", password)
        send(page, FIRST)
        first = stored(page, daemon.url)
        assert len(first["turns"]) == 1 and first["turns"][0]["answer"].strip()

        # The model names the chat; the list shows that name, as text, on one line.
        title = wait_title(page, daemon.url, FIRST)
        assert title.strip() and "\n" not in title and len(title) <= 80
        page.wait_for_function(
            "t => [...document.querySelectorAll('.conv-title')].some(e => e.textContent === t)",
            arg=title,
            timeout=15_000,
        )

        # Regenerate: a new turn in place of the old one.
        page.click(".msg-assistant .regenerate")
        wait_idle(page)
        again = stored(page, daemon.url)
        assert [t["seq"] for t in again["turns"]] == [1]
        assert again["turns"][0]["id"] != first["turns"][0]["id"]
        assert again.get("incomplete") is None

        # Edit the question and resend: the stored request is the edited one.
        page.click(".msg-user .edit-message")
        page.fill(".edit-form textarea", EDITED)
        page.click(".edit-form .edit-save")
        wait_idle(page)
        page.wait_for_function("() => document.querySelectorAll('.msg-user').length === 1")
        edited = stored(page, daemon.url)
        assert [t["seq"] for t in edited["turns"]] == [1]
        assert edited["turns"][0]["messages"][-1]["content"] == EDITED
        assert page.locator(".msg-user").first.inner_text().count(EDITED) == 1
        shot(page, "real-edited-desktop")

        # A system prompt and the Short length reach the engine.
        page.click("#chat-options summary")
        page.select_option("#length-select", "short")
        page.fill("#system-prompt", SYSTEM)
        send(page, "List three common causes of chest pain.")
        turns = stored(page, daemon.url)["turns"]
        assert [t["seq"] for t in turns] == [1, 2]
        assert turns[1]["messages"][0] == {"role": "system", "content": SYSTEM}
        assert 0 < turns[1]["usage"]["completion_tokens"] <= 256

        # My data: the download holds the conversation as it now is.
        page.click("#mydata-open")
        with page.expect_download() as dl:
            page.click("#mydata-export")
        exported = json.loads(Path(dl.value.path()).read_text(encoding="utf-8"))
        [conv] = exported["conversations"]
        assert conv["turns"][0]["messages"][-1]["content"] == EDITED
        assert not console.csp_violations(), console.messages
        assert not console.page_errors(), console.messages
    finally:
        ctx.close()
