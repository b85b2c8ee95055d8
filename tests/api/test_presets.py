"""Shared system-prompt presets over HTTP (the real app in-process over a FakeEngine and a
real SQLite file): admins create, replace and delete them with a fresh second factor, each
change audited by name and length (never the text); every chat user lists them; auditors
and scripts without a chat role do not. And a conversation whose system prompt changed
between requests reads back once, not twice."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from deepseekd.http.state import ACCOUNTS, AUDIT
from tests.api.helpers import CHAT, bearer, code, error, ok_json, secret_of

MakeDaemon = Any  # tests/api/conftest.py
FakeClock = Any

ADMIN = "/admin/api/presets"
PUBLIC = "/v1/presets"
DISCHARGE = "Discharge summary"
TEXT = "Write a discharge summary.\r\nUse plain words.  \n"
STORED = "Write a discharge summary.\nUse plain words."


@dataclass
class World:
    d: Any
    clock: FakeClock
    root_key: str
    secret: str
    nurse_key: str

    def admin(self) -> dict[str, str]:
        self.clock.advance(30)  # each code is accepted once
        return {**bearer(self.root_key), "X-TOTP": code(self.secret, self.clock())}

    def url(self, name: str) -> str:
        return f"{ADMIN}/{quote(name, safe='')}"

    async def put(self, name: str, text: Any, status: int = 200) -> dict[str, Any]:
        resp = await self.d.client.put(self.url(name), json={"text": text}, headers=self.admin())
        return await ok_json(resp, status)  # type: ignore[no-any-return]

    async def events(self, action: str) -> list[dict[str, Any]]:
        return await self.d.app[AUDIT].query(action=action)  # type: ignore[no-any-return]


async def world(make_daemon: MakeDaemon, clock: FakeClock) -> World:
    d = await make_daemon(clock=clock)
    root = await d.app[ACCOUNTS].create_user("root", "admin")
    nurse = await d.app[ACCOUNTS].create_user("nurse", "user")
    assert root.totp_uri
    return World(d, clock, root.api_key, secret_of(root.totp_uri), nurse.api_key)


async def test_admins_create_replace_and_delete_audited_without_the_text(
        make_daemon: MakeDaemon, clock: FakeClock) -> None:
    w = await world(make_daemon, clock)
    c = w.d.client
    empty = await ok_json(await c.get(ADMIN, headers=w.admin()))
    assert empty["data"] == [] and (empty["max_name_chars"], empty["max_text_chars"]) == (80, 4000)

    made = await w.put(" Discharge   summary ", TEXT)  # the name is trimmed, spaces folded
    assert (made["name"], made["text"], made["created"], made["changed"]) == (
        DISCHARGE, STORED, True, True)
    assert made["updated_by"] == "root" and made["updated_at"] == clock()
    [event] = await w.events("preset.change")
    assert (event["actor"], event["target"], event["outcome"]) == ("root", f"preset:{DISCHARGE}",
                                                                    "ok")
    assert json.loads(event["detail"]) == {"chars": len(STORED), "created": True}
    assert "plain words" not in json.dumps(event)  # the text itself is never audited

    # The same text again changes nothing and is not audited twice.
    again = await w.put(DISCHARGE, STORED + "\n")
    assert (again["created"], again["changed"]) == (False, False)
    assert len(await w.events("preset.change")) == 1

    replaced = await w.put(DISCHARGE, "Shorter.")
    assert (replaced["created"], replaced["changed"], replaced["text"]) == (False, True, "Shorter.")
    assert json.loads((await w.events("preset.change"))[-1]["detail"]) == {
        "chars": 8, "created": False}
    await w.put("Explain to a patient", "Explain it simply.")
    listed = await ok_json(await c.get(ADMIN, headers=w.admin()))
    assert [(p["name"], p["text"]) for p in listed["data"]] == [
        (DISCHARGE, "Shorter."), ("Explain to a patient", "Explain it simply.")]

    gone = await ok_json(await c.delete(w.url(DISCHARGE), headers=w.admin()))
    assert gone == {"object": "preset", "name": DISCHARGE, "deleted": True}
    [deleted] = await w.events("preset.delete")
    assert (deleted["target"], json.loads(deleted["detail"])) == (f"preset:{DISCHARGE}",
                                                                  {"chars": 8})
    await error(await c.delete(w.url(DISCHARGE), headers=w.admin()), 404, param="name")
    assert len(await w.events("preset.delete")) == 1
    names = [p["name"] for p in (await ok_json(await c.get(ADMIN, headers=w.admin())))["data"]]
    assert names == ["Explain to a patient"]


async def test_bad_input_is_refused_naming_the_field(make_daemon: MakeDaemon,
                                                     clock: FakeClock) -> None:
    w = await world(make_daemon, clock)
    c = w.d.client
    for name, body, param, words in (
        ("ok", {"text": "x" * 4001}, "text", "4000"),
        ("ok", {"text": "   "}, "text", "needs a text"),
        ("ok", {"text": "bell\x07"}, "text", "control"),
        ("ok", {"text": 12}, "text", ""),
        ("ok", {}, "text", ""),
        ("ok", {"text": "fine", "html": True}, "html", ""),
        ("n" * 81, {"text": "fine"}, "name", "80"),
        ("a/b", {"text": "fine"}, "name", "slash"),
        ("tab\there", {"text": "fine"}, "name", ""),  # folded to one space: accepted below
        (" ", {"text": "fine"}, "name", "needs a name"),
    ):
        resp = await c.put(w.url(name), json=body, headers=w.admin())
        if name == "tab\there":
            assert (await ok_json(resp))["name"] == "tab here"
            continue
        err = await error(resp, 400, "invalid_value", param)
        assert words in err["message"], (name, body, err)
    assert (await w.put("n" * 80, "y" * 4000))["created"] is True  # the limits themselves
    assert [e["target"] for e in await w.events("preset.change")] == [
        "preset:tab here", "preset:" + "n" * 80]


async def test_who_may_call_what(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    w = await world(make_daemon, clock)
    c = w.d.client
    await w.put(DISCHARGE, TEXT)
    auditor = await w.d.app[ACCOUNTS].create_user("aud", "auditor")
    # A chat user (and an admin) read the presets: name and text, not who wrote them.
    for key in (w.nurse_key, w.root_key):
        listed = await ok_json(await c.get(PUBLIC, headers=bearer(key)))
        assert listed == {"object": "list", "data": [
            {"object": "preset", "name": DISCHARGE, "text": STORED}]}
    await error(await c.get(PUBLIC, headers=bearer(auditor.api_key)), 403, "forbidden")
    await error(await c.get(PUBLIC), 401, "missing_api_key")
    # Only admins manage them, and an admin's API key needs a fresh TOTP on every call.
    for key in (w.nurse_key, auditor.api_key):
        h = bearer(key)
        await error(await c.get(ADMIN, headers=h), 403, "forbidden")
        await error(await c.put(w.url("x"), json={"text": "x"}, headers=h), 403, "forbidden")
        await error(await c.delete(w.url(DISCHARGE), headers=h), 403, "forbidden")
    h = bearer(w.root_key)
    await error(await c.put(w.url("x"), json={"text": "x"}, headers=h), 401, "totp_required")
    await error(await c.delete(w.url(DISCHARGE), headers=h), 401, "totp_required")
    await error(await c.delete(w.url(DISCHARGE), headers={**h, "X-TOTP": "000000"}), 401)
    assert len(await w.events("preset.change")) == 1 and await w.events("preset.delete") == []
    assert [p["name"] for p in (await ok_json(await c.get(PUBLIC, headers=h)))["data"]] == [
        DISCHARGE]


async def test_a_changed_system_prompt_does_not_repeat_the_conversation(
        make_daemon: MakeDaemon, clock: FakeClock) -> None:
    """The chat page sends the conversation's system prompt first in every request; when it
    changes (or is set or removed) mid-conversation, the conversation reads back once."""
    w = await world(make_daemon, clock)
    c, h = w.d.client, bearer(w.nurse_key)

    async def send(system: str | None, history: list[dict[str, Any]], text: str,
                   cid: str | None) -> tuple[str, list[dict[str, Any]]]:
        msgs = ([{"role": "system", "content": system}] if system else []) + history + [
            {"role": "user", "content": text}]
        body: dict[str, Any] = {"messages": msgs, "max_tokens": 2}
        if cid:
            body["conversation_id"] = cid
        resp = await c.post(CHAT, json=body, headers=h)
        answer = (await ok_json(resp))["choices"][0]["message"]["content"]
        history = [*history, {"role": "user", "content": text},
                   {"role": "assistant", "content": answer}]
        return resp.headers["X-Conversation-Id"], history

    cid, hist = await send("Be brief.", [], "first", None)
    _, hist = await send("Be very brief.", hist, "second", cid)
    await send("Be very brief.", hist, "third", cid)
    conv = await ok_json(await c.get(f"/v1/conversations/{cid}", headers=h))
    users = [m["content"] for m in conv["messages"] if m["role"] == "user"]
    assert users == ["first", "second", "third"]
    assert [m["content"] for m in conv["messages"] if m["role"] == "system"] == ["Be brief."]
    # Each turn keeps the system prompt it was sent with: the page restores the last one.
    assert [t["messages"][0]["content"] for t in conv["turns"]] == [
        "Be brief.", "Be very brief.", "Be very brief."]

    cid, hist = await send(None, [], "plain", None)
    cid_same, _ = await send("Now formal.", hist, "next", cid)
    assert cid_same == cid
    conv = await ok_json(await c.get(f"/v1/conversations/{cid}", headers=h))
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
