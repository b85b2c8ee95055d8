"""Search over the caller's own conversations and pinning, over HTTP: the real app over a
FakeEngine and a real SQLite file. Titles and turns are sealed, so the server opens the
caller's own conversations to search them: another user's never show, nothing is logged."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from deepseekd.services import conversation_search
from tests.api.helpers import bearer, error, ok_json
from tests.api.test_history_api import CONVS, chat, count, msg, new_user, raw_sql

Daemon = Any
SEARCH = f"{CONVS}/search"


async def search(d: Daemon, q: str, key: str | None = None, **params: Any) -> Any:
    resp = await d.client.get(SEARCH, params={"q": q, **params}, headers=bearer(key or d.key))
    return await ok_json(resp)


async def test_title_and_answer_matches_are_the_owners_only(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    d = daemon
    caplog.set_level(logging.DEBUG)
    _, peru = await chat(d, [msg("user", "What is the capital of PERU today?")])
    _, long = await chat(d, [msg("user", "count for me")], max_tokens=7)
    _, other = await chat(d, [msg("user", "nothing to see")], max_tokens=2)
    eve = await new_user(d, "eve")
    _, eves = await chat(d, [msg("user", "Peru for eve")], key=eve.api_key, max_tokens=7)
    audit_before = await count(d, "audit_events")

    found = await search(d, "peru")
    assert [r["id"] for r in found["data"]] == [peru]
    hit = found["data"][0]
    assert hit["match"] == "title" and hit["title"] == "What is the capital of PERU today?"
    start, end = hit["snippet"]["highlight"]
    assert hit["snippet"]["text"][start:end] == "PERU"
    assert found["has_more"] is False and found["partial"] is False

    # A word of an answer only (the fake answers "tok0 tok1 ..."): max_tokens 7 has tok6.
    found = await search(d, "TOK6")
    assert [r["id"] for r in found["data"]] == [long]
    snip = found["data"][0]["snippet"]
    assert found["data"][0]["match"] == "message"
    assert snip["text"][snip["highlight"][0] : snip["highlight"][1]] == "tok6"

    # Eve finds hers and never the owner's; the owner never Eve's.
    assert [r["id"] for r in (await search(d, "peru", eve.api_key))["data"]] == [eves]
    assert eves not in [r["id"] for r in (await search(d, "tok6"))["data"]]
    assert {r["id"] for r in (await search(d, "tok"))["data"]} == {peru, long, other}

    # Searching one's own history is reading it: not audited, and nothing of it is logged.
    assert await count(d, "audit_events") == audit_before
    for record in caplog.records:
        text = record.getMessage() + str(record.__dict__)
        assert "peru" not in text.lower() and "tok6" not in text.lower(), record


async def test_paging_newest_first(daemon: Daemon) -> None:
    d = daemon
    ids = [(await chat(d, [msg("user", f"needle number {i}")], max_tokens=1))[1] for i in range(5)]
    first = await search(d, "NEEDLE", limit=2)
    assert [r["id"] for r in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True and first["after"] == ids[3]
    second = await search(d, "needle", limit=2, after=first["after"])
    third = await search(d, "needle", limit=2, after=second["after"])
    got = [r["id"] for page in (first, second, third) for r in page["data"]]
    assert got == ids[::-1]
    assert third["has_more"] is False and third["after"] is None


async def test_scan_budget_stops_with_a_cursor(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = daemon
    monkeypatch.setattr(conversation_search, "SCAN_MAX", 3)
    monkeypatch.setattr(conversation_search, "BATCH", 2)
    ids = [(await chat(d, [msg("user", f"chat {i}")], max_tokens=1))[1] for i in range(4)]
    await chat(d, [msg("user", "the one with a rare word")], max_tokens=1)  # newest
    page = await search(d, "missing")
    assert page["data"] == [] and page["scanned"] == 3
    assert page["partial"] is True and page["after"] == ids[2]
    rest = await search(d, "missing", after=page["after"])
    assert rest["scanned"] == 2 and rest["has_more"] is False and rest["partial"] is False


@pytest.mark.parametrize("q", ["", "a", " b ", "x" * 201])
async def test_bad_q_is_400_naming_q(daemon: Daemon, q: str) -> None:
    d = daemon
    await error(await d.client.get(SEARCH, params={"q": q}, headers=d.auth), 400, param="q")


async def test_bad_after_and_limit(daemon: Daemon) -> None:
    d = daemon
    await error(
        await d.client.get(SEARCH, params={"q": "ok", "after": str(uuid.uuid4())}, headers=d.auth),
        400,
        param="after",
    )
    await error(
        await d.client.get(SEARCH, params={"q": "ok", "limit": "51"}, headers=d.auth),
        400,
        param="limit",
    )


async def test_xss_stays_data(daemon: Daemon) -> None:
    d = daemon
    evil = '<img src=x onerror="alert(1)"> payload'
    await chat(d, [msg("user", evil)])
    hit = (await search(d, "onerror"))["data"][0]
    assert hit["title"] == evil and "<img" in hit["snippet"]["text"]


async def test_pin_moves_first_and_is_owner_only(daemon: Daemon) -> None:
    d = daemon
    ids = [(await chat(d, [msg("user", f"chat {i}")], max_tokens=1))[1] for i in range(3)]
    listed = await ok_json(await d.client.get(CONVS, headers=d.auth))
    assert [c["id"] for c in listed["data"]] == ids[::-1]
    assert not any(c["pinned"] for c in listed["data"])

    resp = await d.client.patch(f"{CONVS}/{ids[0]}", json={"pinned": True}, headers=d.auth)
    assert await ok_json(resp) == {"id": ids[0], "pinned": True}
    listed = await ok_json(await d.client.get(CONVS, headers=d.auth))
    assert [(c["id"], c["pinned"]) for c in listed["data"]] == [
        (ids[0], True),
        (ids[2], False),
        (ids[1], False),
    ]
    conv = await ok_json(await d.client.get(f"{CONVS}/{ids[0]}", headers=d.auth))
    assert conv["pinned"] is True
    # Paging crosses from the pinned to the others without losing or repeating one.
    page1 = await ok_json(await d.client.get(CONVS, params={"limit": 1}, headers=d.auth))
    page2 = await ok_json(
        await d.client.get(CONVS, params={"limit": 1, "after": ids[0]}, headers=d.auth)
    )
    page3 = await ok_json(
        await d.client.get(CONVS, params={"limit": 5, "after": ids[2]}, headers=d.auth)
    )
    assert [c["id"] for p in (page1, page2, page3) for c in p["data"]] == [ids[0], ids[2], ids[1]]

    # Another user's (or a missing) conversation is a 404 and stays as it was.
    eve = await new_user(d, "eve")
    for bad in (ids[1], str(uuid.uuid4()), "nope"):
        await error(
            await d.client.patch(
                f"{CONVS}/{bad}", json={"pinned": True}, headers=bearer(eve.api_key)
            ),
            404,
            param="conversation_id",
        )
    rows = await raw_sql(d, f"SELECT pinned_at FROM conversations WHERE id = '{ids[1]}'")
    assert rows == [(None,)]

    # Rename and unpin at once; an empty body is a 400.
    resp = await d.client.patch(
        f"{CONVS}/{ids[0]}", json={"pinned": False, "title": " Renamed "}, headers=d.auth
    )
    assert await ok_json(resp) == {"id": ids[0], "title": "Renamed", "pinned": False}
    listed = await ok_json(await d.client.get(CONVS, headers=d.auth))
    assert [c["id"] for c in listed["data"]] == ids[::-1]
    await error(await d.client.patch(f"{CONVS}/{ids[0]}", json={}, headers=d.auth), 400)
    await error(
        await d.client.patch(f"{CONVS}/{ids[0]}", json={"pinned": "yes"}, headers=d.auth), 400
    )
