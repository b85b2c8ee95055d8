"""A chat stream's admission (#20, first token under load): the quota is counted in the same
transaction as the stream's `inference.start` event, beside the prefill instead of before
it. What a user and an auditor see must not change: a stream over the quota gets a plain 429
before any byte, costs neither a request nor tokens, is audited once as `inference.refused`
(no `.start`, no error event), and its prefill is aborted; an admitted stream has its
`.start` before the answer's record; a break-glass that lifts the quota lets it through on
the record."""

from __future__ import annotations

from typing import Any

from deepseekd.http.state import ACCOUNTS, AUDIT
from tests.api.helpers import CHAT, CHAT_BODY, bearer, error
from tests.api.test_me_usage import usage_of

MakeDaemon = Any
STREAM = {**CHAT_BODY, "stream": True, "max_tokens": 4}


async def stream_ok(d: Any, key: str) -> str:
    r = await d.client.post(CHAT, json=STREAM, headers=bearer(key))
    assert r.status == 200, await r.text()
    body = await r.text()
    assert body.rstrip().endswith("data: [DONE]"), body
    return body


async def test_a_stream_over_the_quota_is_refused_before_any_byte(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    q = await d.app[ACCOUNTS].create_user("streamer", "user", daily_request_limit=2)
    for _ in range(2):
        await stream_ok(d, q.api_key)
    before = await usage_of(d, q.api_key)
    refused = await d.client.post(CHAT, json=STREAM, headers=bearer(q.api_key))
    assert refused.headers["Content-Type"].startswith("application/json")  # not an event stream
    await error(refused, 429, "daily_quota_exceeded")
    assert int(refused.headers["Retry-After"]) >= 1
    assert await usage_of(d, q.api_key) == before  # neither a request nor a token charged
    events = [e for e in await d.app[AUDIT].query(actor="streamer")]
    actions = [e["action"] for e in events]
    assert actions.count("inference.start") == 2 and actions.count("inference") == 2
    assert actions.count("inference.refused") == 1
    refusal = next(e for e in events if e["action"] == "inference.refused")
    assert refusal["outcome"] == "denied" and "daily quota of requests" in refusal["detail"]
    assert not [e for e in events if e["outcome"] == "error"]
    assert len(d.engine.aborted) >= 1  # the prefill that ran beside the count was stopped


async def test_an_admitted_stream_starts_on_the_record(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    await stream_ok(d, d.key)
    events = await d.app[AUDIT].query(actor="tester")
    chain = [e["action"] for e in sorted(events, key=lambda e: e["id"])]
    assert chain[-2:] == ["inference.start", "inference"]
    assert (await usage_of(d, d.key))["requests"]["used"] == 1
