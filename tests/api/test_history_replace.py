"""Editing a sent message and regenerating an answer (``replace_from``, a deepseekd extension
of the chat completion request): the new answer replaces that turn and every later one of
the conversation, atomically when it is stored; a bad ``replace_from`` is refused before
any quota is spent and changes nothing; the audit event records the replacement; the
conversation stays whole (no "incomplete")."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from deepseekd.http.state import ACCOUNTS, AUDIT
from tests.api.helpers import CHAT, bearer, error, ok_json
from tests.fakes import FakeEngine

MakeDaemon = Any  # tests/api/conftest.py
Daemon = Any
CONVS = "/v1/conversations"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def requests_today(d: Daemon, name: str = "tester") -> int:
    conn = sqlite3.connect(Path(d.settings.data_dir) / "deepseekd.db", timeout=10)
    try:
        row = conn.execute(
            "SELECT COALESCE(SUM(q.requests), 0) FROM quota_usage q JOIN users u "
            "ON u.id = q.user_id WHERE u.name = ?",
            (name,),
        ).fetchone()
        return int(row[0])
    finally:
        conn.close()


async def send(
    d: Daemon,
    messages: list[dict[str, str]],
    cid: str | None = None,
    replace_from: str | None = None,
    key: str | None = None,
) -> Any:
    body: dict[str, Any] = {"messages": messages, "max_tokens": 8}
    if cid is not None:
        body["conversation_id"] = cid
    if replace_from is not None:
        body["replace_from"] = replace_from
    return await d.client.post(CHAT, json=body, headers=bearer(key or d.key))


async def conversation(d: Daemon, cid: str, key: str | None = None) -> dict[str, Any]:
    resp = await d.client.get(f"{CONVS}/{cid}", headers=bearer(key or d.key))
    return await ok_json(resp)  # type: ignore[no-any-return]


async def three_turns(d: Daemon) -> tuple[str, list[dict[str, str]], list[str]]:
    """A conversation of three questions and answers: (id, its messages, turn ids)."""
    history: list[dict[str, str]] = []
    cid: str | None = None
    for q in ("first question", "second question", "third question"):
        history.append(user(q))
        resp = await send(d, history, cid)
        body = await ok_json(resp)
        cid = resp.headers["X-Conversation-Id"]
        history.append(assistant(body["choices"][0]["message"]["content"]))
    assert cid is not None
    conv = await conversation(d, cid)
    return cid, history, [t["id"] for t in conv["turns"]]


def shown(conv: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in conv["messages"]]


async def test_regenerate_the_last_answer_replaces_it(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=FakeEngine(model_name="fake-model", echo=True, max_model_len=512))
    cid, history, ids = await three_turns(d)
    # Regenerate: the same history up to the last question, replacing the last turn.
    d.engine.echo = False  # a different answer this time (tok0 tok1 ...)
    resp = await send(d, history[:-1], cid, replace_from=ids[2])
    body = await ok_json(resp)
    assert resp.headers["X-Conversation-Id"] == cid
    conv = await conversation(d, cid)
    assert "incomplete" not in conv
    assert [t["seq"] for t in conv["turns"]] == [1, 2, 3]
    assert [t["id"] for t in conv["turns"][:2]] == ids[:2] and conv["turns"][2]["id"] != ids[2]
    new_answer = body["choices"][0]["message"]["content"]
    assert new_answer != history[-1]["content"]
    assert shown(conv)[-1] == ("assistant", new_answer)
    assert len(conv["messages"]) == 6
    listed = await ok_json(await d.client.get(CONVS, headers=d.auth))
    assert [c["turns"] for c in listed["data"]] == [3]
    # The audit event says what was replaced, never the text.
    [event] = [
        e
        for e in await d.app[AUDIT].query(action="inference")
        if "replaced_from_seq" in (e["detail"] or "")
    ]
    assert event["detail"] == "replaced_from_seq=3"
    assert event["target"] == f"conversation:{cid}"
    assert "question" not in json.dumps(event)


async def test_editing_an_earlier_message_drops_the_later_turns(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=FakeEngine(model_name="fake-model", echo=True, max_model_len=512))
    cid, history, ids = await three_turns(d)
    # Rate the second answer: its feedback goes with it.
    rated = await d.client.put(
        f"{CONVS}/{cid}/turns/{ids[1]}/feedback",
        json={"rating": "down", "comment": "wrong"},
        headers=d.auth,
    )
    await ok_json(rated)
    edited = [*history[:2], user("second question, edited")]
    body = await ok_json(await send(d, edited, cid, replace_from=ids[1]))
    assert body["choices"][0]["message"]["content"] == "second question, edited"
    conv = await conversation(d, cid)
    assert "incomplete" not in conv
    assert [t["seq"] for t in conv["turns"]] == [1, 2]
    assert conv["turns"][0]["id"] == ids[0] and conv["turns"][1]["id"] not in ids
    assert "feedback" not in conv["turns"][1]
    assert shown(conv) == [
        ("user", "first question"),
        ("assistant", "first question"),
        ("user", "second question, edited"),
        ("assistant", "second question, edited"),
    ]
    # The rows are gone from the database, not hidden.
    conn = sqlite3.connect(Path(d.settings.data_dir) / "deepseekd.db", timeout=10)
    try:
        left = {
            r[0] for r in conn.execute("SELECT id FROM turns WHERE conversation_id = ?", (cid,))
        }
        rated_rows = conn.execute(
            "SELECT COUNT(*) FROM turns WHERE feedback_rating IS NOT NULL"
        ).fetchone()[0]
    finally:
        conn.close()
    assert ids[1] not in left and ids[2] not in left and ids[0] in left
    assert rated_rows == 0
    # The conversation goes on from there.
    more = [*edited, assistant("second question, edited"), user("fourth")]
    await ok_json(await send(d, more, cid))
    conv = await conversation(d, cid)
    assert [t["seq"] for t in conv["turns"]] == [1, 2, 3] and "incomplete" not in conv
    # Replacing from the first turn leaves one.
    await ok_json(await send(d, [user("start over")], cid, replace_from=ids[0]))
    conv = await conversation(d, cid)
    assert shown(conv) == [("user", "start over"), ("assistant", "start over")]
    assert "incomplete" not in conv


async def test_a_stopped_answer_replaces_too(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=FakeEngine(model_name="fake-model", echo=True, max_model_len=512))
    cid, history, ids = await three_turns(d)
    d.engine.token_delay = 0.05
    long = [*history[:-1], user(" ".join(f"w{k}" for k in range(40)))]
    resp = await d.client.post(
        CHAT,
        json={
            "messages": long,
            "conversation_id": cid,
            "replace_from": ids[2],
            "stream": True,
            "max_tokens": 40,
        },
        headers=d.auth,
        timeout=None,
    )
    assert resp.status == 200
    for _ in range(3):
        await resp.content.readline()
    resp.close()  # the user stopped the answer
    for _ in range(200):
        conv = await conversation(d, cid)
        if conv["turns"][-1]["id"] != ids[2]:
            break
        await asyncio.sleep(0.05)
    d.engine.token_delay = 0.0
    assert [t["seq"] for t in conv["turns"]] == [1, 2, 3] and "incomplete" not in conv
    assert conv["turns"][2]["stopped"] is True
    assert conv["turns"][2]["messages"][-1]["content"].startswith("w0 w1")
    [abort] = await d.app[AUDIT].query(action="inference.abort")
    assert "replaced_from_seq=3" in abort["detail"]


async def test_a_refused_replacement_changes_nothing_and_costs_nothing(
    make_daemon: MakeDaemon,
) -> None:
    d = await make_daemon(engine=FakeEngine(model_name="fake-model", echo=True, max_model_len=512))
    cid, history, ids = await three_turns(d)
    other_cid, _, other_ids = await three_turns(d)
    before = await conversation(d, cid)
    spent = requests_today(d)
    # Without conversation_id; unknown; malformed; a turn of another conversation.
    await error(await send(d, history[:1], None, replace_from=ids[0]), 400, param="replace_from")
    await error(
        await send(d, history[:1], cid, replace_from=str(uuid.uuid4())), 404, param="replace_from"
    )
    await error(
        await send(d, history[:1], cid, replace_from="not-a-turn"), 404, param="replace_from"
    )
    await error(
        await send(d, history[:1], cid, replace_from=other_ids[0]), 404, param="replace_from"
    )
    # A request the server refuses (too many tokens asked) replaces nothing either.
    big = {
        "messages": history[:1],
        "conversation_id": cid,
        "replace_from": ids[0],
        "max_tokens": 10_000_000,
    }
    await error(await d.client.post(CHAT, json=big, headers=d.auth), 400, param="max_tokens")
    # The engine failing before any answer: nothing deleted.
    d.engine.fail_after = 0
    failed = await send(d, history[:1], cid, replace_from=ids[0])
    assert failed.status >= 500
    d.engine.fail_after = None
    d.engine._dead = False
    assert await conversation(d, cid) == before
    assert len((await conversation(d, other_cid))["turns"]) == 3
    assert requests_today(d) == spent + 1  # only the request that reached the engine


async def test_another_users_turn_is_a_404(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=FakeEngine(model_name="fake-model", echo=True, max_model_len=512))
    cid, _, ids = await three_turns(d)
    other = (await d.app[ACCOUNTS].create_user("mallory", "user")).api_key
    resp = await send(d, [user("mine")], key=other)
    mine = resp.headers["X-Conversation-Id"]
    await resp.read()
    # Her own conversation, my turn; and my conversation with my turn.
    await error(
        await send(d, [user("x")], mine, replace_from=ids[0], key=other), 404, param="replace_from"
    )
    await error(
        await send(d, [user("x")], cid, replace_from=ids[0], key=other),
        404,
        param="conversation_id",
    )
    assert len((await conversation(d, cid))["turns"]) == 3
    assert requests_today(d, "mallory") == 1
