"""Automatic chat titles ([web] auto_title) over HTTP, the real app in-process over the
FakeEngine in echo mode (the "title" it writes repeats what the title prompt showed it):
a chat started in a browser session gets the model's title after its first answer; an API
key's chat keeps its first-message title; a rename made meanwhile wins; a failing engine
leaves the title as it was; the setting turns it off; it costs the user no quota and
never puts the text in the log."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from deepseekd.http.state import ACCOUNTS, CHAT
from deepseekd.services.chat.titles import MAX_CHARS, MAX_TOKENS, clean_title
from tests.api.helpers import CHAT as CHAT_PATH
from tests.api.helpers import ok_json
from tests.fakes import FakeEngine

MakeDaemon = Any  # tests/api/conftest.py
Daemon = Any
QUESTION = "dose of amoxicillin for a child"
TITLED = "Question: dose of amoxicillin for a child Answer: dose of amoxicillin for a child"


async def signed_in(d: Daemon, name: str = "nurse") -> dict[str, str]:
    """A chat-page session for a new user (the cookie stays in the client's jar); returns
    the headers a page sends (its CSRF token)."""
    new = await d.app[ACCOUNTS].create_user(name, "user")
    body = await ok_json(
        await d.client.post("/auth/login", json={"username": name, "password": new.password})
    )
    return {"X-CSRF-Token": body["csrf_token"]}


async def first_answer(d: Daemon, headers: dict[str, str], text: str = QUESTION) -> str:
    resp = await d.client.post(
        CHAT_PATH,
        json={"messages": [{"role": "user", "content": text}], "max_tokens": 12},
        headers=headers,
    )
    await ok_json(resp)
    return str(resp.headers["X-Conversation-Id"])


async def title_of(d: Daemon, cid: str, headers: dict[str, str]) -> str:
    await d.app[CHAT].titles.idle()
    conv = await ok_json(await d.client.get(f"/v1/conversations/{cid}", headers=headers))
    listed = await ok_json(await d.client.get("/v1/conversations", headers=headers))
    assert [c["title"] for c in listed["data"] if c["id"] == cid] == [conv["title"]]
    return str(conv["title"])


def usage(d: Daemon) -> tuple[int, int]:
    conn = sqlite3.connect(Path(d.settings.data_dir) / "deepseekd.db", timeout=10)
    try:
        row = conn.execute(
            "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(tokens), 0) FROM quota_usage"
        ).fetchone()
        return int(row[0]), int(row[1])
    finally:
        conn.close()


def engine() -> FakeEngine:
    return FakeEngine(model_name="fake-model", echo=True, max_model_len=512)


async def test_a_chat_started_in_the_browser_gets_the_models_title(
    make_daemon: MakeDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    d = await make_daemon(engine=engine())
    page = await signed_in(d)
    cid = await first_answer(d, page)
    spent = usage(d)
    title = await title_of(d, cid, page)
    assert title == TITLED[:MAX_CHARS].rsplit(" ", 1)[0]
    # Greedy, a small budget, the user's own prefix cache; not charged to the user.
    _, options, _ = d.engine.requests[-1]
    assert (options.max_tokens, options.temperature) == (MAX_TOKENS, 0.0)
    assert usage(d) == spent
    # The prompt showed the question and answer under a fixed instruction.
    messages, _, _ = d.engine.chats[-1]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "title" in messages[0]["content"]
    assert "amoxicillin" not in caplog.text
    # Only the first answer gets a title: the next one leaves it.
    resp = await d.client.post(
        CHAT_PATH,
        json={
            "conversation_id": cid,
            "max_tokens": 4,
            "messages": [
                {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": QUESTION},
                {"role": "user", "content": "and for an adult"},
            ],
        },
        headers=page,
    )
    await ok_json(resp)
    assert await title_of(d, cid, page) == title
    # It stays editable.
    renamed = await d.client.patch(
        f"/v1/conversations/{cid}", json={"title": "Amoxicillin"}, headers=page
    )
    await ok_json(renamed)
    assert await title_of(d, cid, page) == "Amoxicillin"


async def test_an_api_key_chat_keeps_its_first_message_title(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine())
    cid = await first_answer(d, d.auth)
    asked = len(d.engine.requests)
    assert await title_of(d, cid, d.auth) == QUESTION
    assert len(d.engine.requests) == asked  # the model was not asked


async def test_a_rename_meanwhile_wins(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine())
    page = await signed_in(d)
    one_at_a_time = d.app[CHAT].titles._one
    await one_at_a_time.acquire()  # another title is being written: this one waits
    try:
        cid = await first_answer(d, page)
        await asyncio.sleep(0.05)
        resp = await d.client.patch(
            f"/v1/conversations/{cid}", json={"title": "Mine"}, headers=page
        )
        await ok_json(resp)
    finally:
        one_at_a_time.release()
    assert await title_of(d, cid, page) == "Mine"


async def test_a_failing_engine_leaves_the_first_message_title(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine())
    page = await signed_in(d)
    one_at_a_time = d.app[CHAT].titles._one
    await one_at_a_time.acquire()
    try:
        cid = await first_answer(d, page)
        d.engine.fail_after = 0  # the engine dies when the title is asked for
    finally:
        one_at_a_time.release()
    assert await title_of(d, cid, page) == QUESTION
    d.engine.fail_after, d.engine._dead = None, False
    # An answer with nothing usable in it (only quotes) keeps it too.
    d.engine.script = lambda options: '""' if options.max_tokens == MAX_TOKENS else "ok"
    cid = await first_answer(d, page, "second chat")
    assert await title_of(d, cid, page) == "second chat"


async def test_the_setting_turns_it_off(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine(), env={"DEEPSEEKD_WEB__AUTO_TITLE": "false"})
    page = await signed_in(d)
    cid = await first_answer(d, page)
    assert await title_of(d, cid, page) == QUESTION


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        (
            '"Amoxicillin dosing for children"\n\nThis chat is about...',
            "Amoxicillin dosing for children",
        ),
        ("Title: Ward 3 handover.", "Ward 3 handover"),
        ("**Chat title:** 'Sepsis bundle'", "Sepsis bundle"),
        ("\n\n  Night   shift\tplan  \n", "Night shift plan"),
        ("x" * 200, "x" * MAX_CHARS),
        ("word " * 40, ("word " * 16).strip()),
        ('""', ""),
        ('The answer is "Spola', "The answer is Spola"),  # cut off by the token budget
        ('The "Ward 3" handover', 'The "Ward 3" handover'),
        ("", ""),
    ],
)
def test_the_models_answer_is_cleaned_to_one_short_line(raw: str, title: str) -> None:
    assert clean_title(raw) == title
    assert len(clean_title(raw)) <= MAX_CHARS
