"""Answer feedback over HTTP (the real app in-process over a FakeEngine and a real SQLite
file): the owner rates an answer (up, down or back to none) with an optional comment, which
is sealed at rest like the turn; another user's turn is a 404; deleting the conversation and
erasing the user take the feedback with them; the admin's report holds counts per model,
adapter and day, never a comment or a prompt; every rating and report is audited without
its text."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepseekd.http.state import ACCOUNTS, AUDIT, QUOTA
from deepseekd.services.feedback import build_report
from tests.api.helpers import CHAT, bearer, code, error, ok_json, secret_of

MakeDaemon = Any  # tests/api/conftest.py
FakeClock = Any

REPORT = "/admin/api/feedback"
PROMPT = "dose of amoxicillin for a child of 12 kg"
XSS = '<img src=x onerror="alert(1)"><script>alert(2)</script> wrong dose & "units"'


@dataclass
class World:
    d: Any
    clock: FakeClock
    root_key: str
    secret: str
    keys: dict[str, str]

    def admin(self) -> dict[str, str]:
        self.clock.advance(30)  # each code is accepted once
        return {**bearer(self.root_key), "X-TOTP": code(self.secret, self.clock())}

    async def answer(self, who: str, prompt: str = PROMPT) -> tuple[str, str]:
        """A new conversation of ``who`` with one answer: (conversation id, turn id)."""
        resp = await self.d.client.post(CHAT, json={
            "messages": [{"role": "user", "content": prompt}], "max_tokens": 3},
            headers=bearer(self.keys[who]))
        await ok_json(resp)
        cid = resp.headers["X-Conversation-Id"]
        conv = await self.conversation(who, cid)
        return cid, str(conv["turns"][0]["id"])

    async def conversation(self, who: str, cid: str) -> dict[str, Any]:
        resp = await self.d.client.get(f"/v1/conversations/{cid}", headers=bearer(self.keys[who]))
        return await ok_json(resp)  # type: ignore[no-any-return]

    async def rate(self, who: str, cid: str, tid: str, body: Any) -> Any:
        return await self.d.client.put(f"/v1/conversations/{cid}/turns/{tid}/feedback",
                                       json=body, headers=bearer(self.keys[who]))

    async def report(self, query: str = "") -> tuple[dict[str, Any], str]:
        resp = await self.d.client.get(REPORT + query, headers=self.admin())
        text = await resp.text()
        assert resp.status == 200, text
        return json.loads(text), text

    def today(self) -> str:
        return str(self.d.app[QUOTA].window(self.clock())[0])


async def world(make_daemon: MakeDaemon, clock: FakeClock) -> World:
    d = await make_daemon(clock=clock)
    accounts = d.app[ACCOUNTS]
    root = await accounts.create_user("root", "admin")
    keys = {name: (await accounts.create_user(name, "user")).api_key for name in ("ana", "ben")}
    assert root.totp_uri
    return World(d, clock, root.api_key, secret_of(root.totp_uri), keys)


def raw(w: World, statement: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(Path(w.d.settings.data_dir) / "deepseekd.db", timeout=10)
    try:
        rows = conn.execute(statement).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


async def test_the_owner_rates_changes_and_takes_back(make_daemon: MakeDaemon,
                                                      clock: FakeClock) -> None:
    w = await world(make_daemon, clock)
    cid, tid = await w.answer("ana")
    assert "feedback" not in (await w.conversation("ana", cid))["turns"][0]

    down = await ok_json(await w.rate("ana", cid, tid, {"rating": "down", "comment": f" {XSS} "}))
    assert down == {"object": "feedback", "conversation_id": cid, "turn_id": tid,
                    "rating": "down", "comment": XSS, "updated_at": clock()}
    turn = (await w.conversation("ana", cid))["turns"][0]
    assert turn["feedback"] == {"rating": "down", "comment": XSS, "updated_at": clock()}
    # Changing one's mind replaces the rating (and, left out, the comment).
    clock.advance(5)
    await ok_json(await w.rate("ana", cid, tid, {"rating": "up"}))
    turn = (await w.conversation("ana", cid))["turns"][0]
    assert turn["feedback"] == {"rating": "up", "comment": "", "updated_at": clock()}
    taken = await ok_json(await w.rate("ana", cid, tid, {"rating": None}))
    assert (taken["rating"], taken["comment"], taken["updated_at"]) == (None, "", None)
    assert "feedback" not in (await w.conversation("ana", cid))["turns"][0]
    # The export (GDPR Art. 15) carries the user's own feedback with the turn.
    await ok_json(await w.rate("ana", cid, tid, {"rating": "down", "comment": "too long"}))
    export = await ok_json(await w.d.client.get("/v1/me/export", headers=bearer(w.keys["ana"])))
    assert export["conversations"][0]["turns"][0]["feedback"]["comment"] == "too long"

    events = await w.d.app[AUDIT].query(action="feedback.set")
    assert [json.loads(e["detail"])["rating"] for e in events] == ["down", "up", None, "down"]
    assert [json.loads(e["detail"])["comment"] for e in events] == [True, False, False, True]
    for e in events:
        assert (e["actor"], e["target"], e["model"], e["outcome"]) == (
            "ana", f"turn:{tid}", "fake-model", "ok")
        assert json.loads(e["detail"])["conversation"] == cid
    assert "onerror" not in json.dumps(events) and "too long" not in json.dumps(events)


async def test_the_comment_is_sealed_at_rest(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    w = await world(make_daemon, clock)
    cid, tid = await w.answer("ana")
    secret = "patient-" + uuid.uuid4().hex
    await ok_json(await w.rate("ana", cid, tid, {"rating": "down", "comment": secret}))
    [(rating, sealed)] = raw(w, f"SELECT feedback_rating, feedback_comment_ct FROM turns "
                                f"WHERE id = '{tid}'")
    assert rating == "down" and sealed and secret.encode() not in sealed
    data = Path(w.d.settings.data_dir)
    for path in data.glob("deepseekd.db*"):
        assert secret.encode() not in path.read_bytes(), path.name
    # Bound to the turn and its rating: a rating changed behind the service's back makes the
    # turn unreadable (reported, audited), it does not show a comment under another rating.
    await asyncio.to_thread(raw, w, f"UPDATE turns SET feedback_rating = 'up' WHERE id = '{tid}'")
    conv = await w.conversation("ana", cid)
    assert conv["turns"][0]["unreadable"] is True
    assert [e["target"] for e in await w.d.app[AUDIT].query(action="history.unreadable")] == [
        f"turn:{tid}"]


async def test_bad_input_is_refused_naming_the_field(make_daemon: MakeDaemon,
                                                     clock: FakeClock) -> None:
    w = await world(make_daemon, clock)
    cid, tid = await w.answer("ana")
    for body, param in [
        ({"rating": "meh"}, "rating"),
        ({"rating": 1}, "rating"),
        ({}, "rating"),
        ({"rating": "up", "comment": "x" * 1001}, "comment"),
        ({"rating": None, "comment": "a comment without a rating"}, "comment"),
        ({"rating": "up", "comment": 5}, "comment"),
        ({"rating": "up", "comment": "nul\x00"}, "comment"),
        ({"rating": "up", "stars": 5}, "stars"),
    ]:
        err = await error(await w.rate("ana", cid, tid, body), 400, "invalid_value", param)
        if param == "comment" and "x" * 10 in json.dumps(body):
            assert "1000" in err["message"]
    await ok_json(await w.rate("ana", cid, tid, {"rating": "up", "comment": "y" * 1000}))
    await error(await w.rate("ana", cid, "not-a-turn", {"rating": "up"}), 404, param="turn_id")
    await error(await w.rate("ana", "not-a-conv", tid, {"rating": "up"}), 404, param=
                "conversation_id")
    assert len(await w.d.app[AUDIT].query(action="feedback.set")) == 1


async def test_another_users_turn_is_a_404(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    w = await world(make_daemon, clock)
    cid, tid = await w.answer("ana")
    other_cid, other_tid = await w.answer("ana", "another question")
    missing = str(uuid.uuid4())
    theirs = await error(await w.rate("ben", cid, tid, {"rating": "down"}), 404, param=
                         "conversation_id")
    absent = await error(await w.rate("ben", missing, tid, {"rating": "down"}), 404, param=
                         "conversation_id")
    # Exactly like a conversation that does not exist: nothing tells it is someone else's.
    assert theirs["message"].replace(cid, "ID") == absent["message"].replace(missing, "ID")
    # Ana's own turn, named under another of her conversations, is not in that one.
    await error(await w.rate("ana", other_cid, tid, {"rating": "up"}), 404, param="turn_id")
    await error(await w.rate("ana", cid, str(uuid.uuid4()), {"rating": "up"}), 404, param=
                "turn_id")
    assert "feedback" not in (await w.conversation("ana", cid))["turns"][0]
    assert await w.d.app[AUDIT].query(action="feedback.set") == []
    assert other_tid != tid


async def test_the_admin_report_counts_and_never_shows_text(make_daemon: MakeDaemon,
                                                            clock: FakeClock) -> None:
    w = await world(make_daemon, clock)
    ratings = [("ana", "down", XSS), ("ana", "up", ""), ("ben", "down", ""), ("ben", "up", "ok")]
    for who, rating, comment in ratings:
        cid, tid = await w.answer(who)
        await ok_json(await w.rate(who, cid, tid, {"rating": rating, "comment": comment}))
    unrated_cid, _ = await w.answer("ben")
    today = w.today()
    report, text = await w.report()
    row = {"model": "fake-model", "adapter": None, "day": today, "up": 2, "down": 2,
           "with_comment": 2}
    assert report["data"] == [row]
    assert report["totals"] == [{k: v for k, v in row.items() if k != "day"}]
    assert report["to"] == today and report["object"] == "list"
    for words in ("onerror", "amoxicillin", PROMPT, "ana", "ben", '"ok"'):
        assert words not in text, words  # counts only: no comment, prompt, answer or rater
    [event] = await w.d.app[AUDIT].query(action="feedback.report")
    assert (event["actor"], event["outcome"]) == ("root", "ok")
    assert json.loads(event["detail"])["to"] == today

    empty, _ = await w.report("?from=2020-01-01&to=2020-01-31")
    assert (empty["data"], empty["totals"]) == ([], [])
    for query, param in [("?from=2026-13-01", "from"), ("?to=yesterday", "to"),
                         (f"?from={today}&to=2020-01-01", "from"),
                         ("?from=2020-01-01&to=2022-01-01", "from")]:
        resp = await w.d.client.get(REPORT + query, headers=w.admin())
        await error(resp, 400, "invalid_value", param)
    await error(await w.d.client.get(REPORT, headers=bearer(w.keys["ana"])), 403, "forbidden")

    # Deleting a conversation takes its rating with it.
    listed = await ok_json(await w.d.client.get("/v1/conversations",
                                                headers=bearer(w.keys["ana"])))
    for conv in listed["data"]:
        await ok_json(await w.d.client.delete(f"/v1/conversations/{conv['id']}",
                                              headers=bearer(w.keys["ana"])))
    report, _ = await w.report()
    assert (report["data"][0]["up"], report["data"][0]["down"]) == (1, 1)
    assert unrated_cid


async def test_erasure_removes_the_feedback(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    w = await world(make_daemon, clock)
    for who in ("ana", "ben"):
        cid, tid = await w.answer(who)
        await ok_json(await w.rate(who, cid, tid, {"rating": "down", "comment": f"{who} says"}))
    assert (await w.report())[0]["data"][0]["down"] == 2
    await ok_json(await w.d.client.post("/admin/api/users/ana/erase", headers=w.admin()))
    report, _ = await w.report()
    assert report["data"][0]["down"] == 1 and report["data"][0]["with_comment"] == 1
    ana = raw(w, "SELECT id FROM users WHERE name = 'ana'")[0][0]
    assert raw(w, f"SELECT count(*) FROM turns WHERE user_id = {ana}") == [(0,)]
    assert raw(w, "SELECT count(*) FROM turns WHERE feedback_rating IS NOT NULL") == [(1,)]


def test_the_report_splits_adapters_and_counts_each_rating_on_its_quota_day() -> None:
    # Quota days in UTC+10 with the day turning at 04:00 local (18:00 UTC the day before).
    def day_of(at: float) -> str:
        return "2026-11-02" if at >= 1_762_020_000 else "2026-11-01"

    rows = [
        ("base-7b", 1_762_019_999.0, "up", False),
        ("base-7b", 1_762_020_000.0, "down", True),
        ("base-7b:radiology", 1_762_020_100.0, "down", False),
        ("base-7b:radiology", 1_762_020_200.0, "up", True),
        ("base-7b", 1_762_020_300.0, "up", False),
    ]
    report = build_report("2026-11-02", "2026-11-02", rows, day_of)
    assert report.as_json()["data"] == [
        {"model": "base-7b", "adapter": None, "day": "2026-11-02", "up": 1, "down": 1,
         "with_comment": 1},
        {"model": "base-7b", "adapter": "radiology", "day": "2026-11-02", "up": 1, "down": 1,
         "with_comment": 1},
    ]
    assert [t["adapter"] for t in report.as_json()["totals"]] == [None, "radiology"]
