"""GET /audit/api/export and the auditor view's queries of GET /audit/api/events, against the
real app over a real SQLite file: auditors only, every format streamed as a download with a
file name, the filters of the events route, bad input a 400 naming the parameter, and each
export audited (``audit.export``) without holding its own record."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from fhir.resources.bundle import Bundle as BundleR5
from fhir.resources.R4B.bundle import Bundle as BundleR4

from deepseekd.http.state import ACCOUNTS
from deepseekd.services.audit_export import COLUMNS
from tests.api.helpers import CHAT, CHAT_BODY, bearer, error, login, ok_json, secret_of

MakeDaemon = Any
FakeClock = Any
EXPORT = "/audit/api/export"


async def _world(make_daemon: MakeDaemon, clock: FakeClock) -> dict[str, Any]:
    d = await make_daemon(clock=clock)
    accounts = d.app[ACCOUNTS]
    auditor = await accounts.create_user("ms.audit", "auditor")
    root = await accounts.create_user("root", "admin")
    for _ in range(2):
        clock.advance(1)
        await ok_json(await d.client.post(CHAT, json=CHAT_BODY, headers=d.auth))
    clock.advance(1)
    d.engine.fail_after = 1  # the engine dies mid-answer: an inference event, outcome error
    resp = await d.client.post(CHAT, json={**CHAT_BODY, "max_tokens": 5}, headers=d.auth)
    assert resp.status == 503, await resp.text()
    d.engine.fail_after, d.engine._dead = None, False
    assert root.password is not None
    session = await login(d.client, "root", root.password, secret_of(root.totp_uri), clock)
    return {"d": d, "auditor": bearer(auditor.api_key), "admin_key": bearer(root.api_key),
            "admin_session": bearer(session), "auditor_password": auditor.password}


async def _events(d: Any, headers: dict[str, str], qs: str = "limit=1000") -> list[Any]:
    return (await ok_json(await d.client.get(f"/audit/api/events?{qs}", headers=headers)))[
        "events"]


async def test_only_auditors_export(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    w = await _world(make_daemon, clock)
    d = w["d"]
    await error(await d.client.get(EXPORT), 401, "missing_api_key")
    for who in ("admin_key", "admin_session"):
        await error(await d.client.get(EXPORT, headers=w[who]), 403, "forbidden")
    await error(await d.client.get(EXPORT, headers=d.auth), 403, "forbidden")  # a user
    # A refused caller exported nothing, and no export was recorded for them.
    assert await _events(d, w["auditor"], "action=audit.export") == []


async def test_each_format_streams_as_a_download(make_daemon: MakeDaemon,
                                                 clock: FakeClock) -> None:
    w = await _world(make_daemon, clock)
    d, auditor = w["d"], w["auditor"]
    before = await _events(d, auditor)  # these and the export records come out below
    expected = {
        "jsonl": ("application/x-ndjson", ".jsonl"),
        "csv": ("text/csv", ".csv"),
        "fhir": ("application/fhir+json", ".fhir.json"),
        "fhir-r5": ("application/fhir+json", ".fhir-r5.json"),
    }
    bodies = {}
    for fmt, (media, ext) in expected.items():
        resp = await d.client.get(f"{EXPORT}?format={fmt}", headers=auditor)
        body = await resp.text()
        assert resp.status == 200, body
        assert resp.content_type == media
        assert resp.headers["Transfer-Encoding"] == "chunked"  # streamed, not buffered
        disposition = resp.headers["Content-Disposition"]
        assert disposition.startswith('attachment; filename="deepseekd-audit-')
        assert disposition.endswith(f'{ext}"')
        assert resp.headers["Cache-Control"] == "no-store"
        bodies[fmt] = body
    # Each export holds the log up to its own record: the next one holds that record too.
    ids = [e["id"] for e in before]
    lines = [json.loads(x) for x in bodies["jsonl"].splitlines()]
    assert [x["id"] for x in lines] == ids
    assert [x["id"] for x in csv.DictReader(io.StringIO(bodies["csv"], newline=""))] == [
        str(i) for i in [*ids, ids[-1] + 1]]
    r4 = json.loads(bodies["fhir"])
    BundleR4.model_validate(r4)
    assert len(r4["entry"]) == len(ids) + 2
    BundleR5.model_validate(json.loads(bodies["fhir-r5"]))
    chat = next(x for x in lines if x["action"] == "inference")
    assert len(chat["prompt_hmac"]) == 64 and chat["request_id"]
    assert "hello there" not in "".join(bodies.values())  # the prompt: never content


async def test_filters_and_the_export_record(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    w = await _world(make_daemon, clock)
    d, auditor = w["d"], w["auditor"]
    chats = await _events(d, auditor, "action=inference")
    since = chats[1]["at"]
    resp = await d.client.get(
        f"{EXPORT}?format=csv&actor=tester&action=inference&outcome=ok&since={since}",
        headers=auditor)
    rows = list(csv.DictReader(io.StringIO(await resp.text(), newline="")))
    assert list(rows[0]) == list(COLUMNS)
    assert [int(r["id"]) for r in rows] == [chats[1]["id"]]
    refused = await d.client.get(f"{EXPORT}?outcome=error&since={since}", headers=auditor)
    assert [json.loads(x)["action"] for x in (await refused.text()).splitlines()] == [
        "inference"]

    records = await _events(d, auditor, "action=audit.export")
    assert len(records) == 2
    first = records[0]
    assert (first["actor"], first["role"], first["outcome"]) == ("ms.audit", "auditor", "ok")
    assert first["client"] == "127.0.0.1"
    detail = json.loads(first["detail"])
    assert detail["format"] == "csv" and detail["actor"] == "tester"
    assert detail["action"] == "inference" and detail["outcome"] == "ok"
    assert detail["since"].endswith("Z")
    verify = await ok_json(await d.client.get("/audit/api/verify", headers=auditor))
    assert verify["ok"]


async def test_bad_input_is_a_400_naming_the_parameter(make_daemon: MakeDaemon,
                                                       clock: FakeClock) -> None:
    w = await _world(make_daemon, clock)
    d, auditor = w["d"], w["auditor"]
    for qs, param in (("format=xml", "format"), ("format=JSONL", "format"),
                      ("since=yesterday", "since"), ("until=-1", "until"),
                      ("since=20&until=10", "until"), ("since=10&until=10", "until"),
                      ("actor=" + "a" * 65, "actor"), ("outcome=" + "x" * 65, "outcome")):
        await error(await d.client.get(f"{EXPORT}?{qs}", headers=auditor), 400, param=param)
    for qs, param in (("order=newest", "order"), ("before_id=-3", "before_id"),
                      ("before_id=x", "before_id"), ("outcome=" + "x" * 65, "outcome")):
        await error(await d.client.get(f"/audit/api/events?{qs}", headers=auditor), 400,
                    param=param)
    # Nothing refused was recorded as an export.
    assert await _events(d, auditor, "action=audit.export") == []


async def test_events_newest_first_with_paging_and_outcome(make_daemon: MakeDaemon,
                                                           clock: FakeClock) -> None:
    w = await _world(make_daemon, clock)
    d, auditor = w["d"], w["auditor"]
    oldest_first = [e["id"] for e in await _events(d, auditor)]
    # The default (and API users' paging by after_id) stays the oldest first.
    page = await ok_json(await d.client.get("/audit/api/events?limit=3", headers=auditor))
    assert [e["id"] for e in page["events"]] == oldest_first[:3]
    assert (page["next_after_id"], page["next_before_id"]) == (oldest_first[2], None)
    seen: list[int] = []
    before = ""
    while True:
        page = await ok_json(await d.client.get(
            f"/audit/api/events?order=desc&limit=4{before}", headers=auditor))
        seen += [e["id"] for e in page["events"]]
        assert page["next_after_id"] is None
        if page["next_before_id"] is None:
            break
        before = f"&before_id={page['next_before_id']}"
    assert seen == oldest_first[::-1]
    denied = await _events(d, auditor, "outcome=error&order=desc")
    assert [e["action"] for e in denied] == ["inference"]
    assert all(e["outcome"] == "ok" for e in await _events(d, auditor, "outcome=ok"))


async def test_a_browser_session_can_download(make_daemon: MakeDaemon,
                                              clock: FakeClock) -> None:
    """The auditor view's links: the session cookie alone is enough for a GET."""
    w = await _world(make_daemon, clock)
    d = w["d"]
    resp = await d.client.post("/auth/login", json={"username": "ms.audit",
                                                    "password": w["auditor_password"]})
    await ok_json(resp)
    got = await d.client.get(f"{EXPORT}?format=csv&action=inference")
    assert got.status == 200 and got.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await got.text(), newline="")))
    assert len(rows) == 3 and {r["action"] for r in rows} == {"inference"}


async def test_head_runs_no_export_and_records_none(make_daemon: MakeDaemon,
                                                    clock: FakeClock) -> None:
    w = await _world(make_daemon, clock)
    d = w["d"]
    resp = await d.client.head(f"{EXPORT}?format=csv", headers=w["auditor"])
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/csv")
    await error(await d.client.get(f"{EXPORT}?format=xml", headers=w["auditor"]), 400,
                param="format")
    assert await _events(d, w["auditor"], "action=audit.export") == []
