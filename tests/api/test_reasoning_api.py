"""A reasoning model over HTTP: the real app in-process, a FakeEngine that thinks (its output
is ``r0 r1 r2</think>tok0 tok1 ...``, after a template that opened ``<think>``, as R1's does)
and a real SQLite file. The split itself is tested with vLLM's parser in tests/unit."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from deepseekd.http.state import ACCOUNTS, AUDIT
from tests.api.helpers import CHAT, bearer, ok_json
from tests.api.test_history_api import raw_sql, sse_payloads
from tests.fakes import FakeEngine

Daemon = Any  # tests/api/conftest.py
MakeDaemon = Any

BODY = {"messages": [{"role": "user", "content": "what is two plus two"}], "max_tokens": 8}
REASONING = "r0 r1 r2"
ANSWER = "tok0 tok1 tok2 tok3"
REASONING_TOKENS = 4  # r0 r1 r2 </think>


def thinker(**kw: Any) -> FakeEngine:
    return FakeEngine(model_name="fake-model", think=3, think_open=True, **kw)


async def stream(d: Daemon, body: dict[str, Any], key: str | None = None) -> list[Any]:
    resp = await d.client.post(CHAT, json={**body, "stream": True,
                                           "stream_options": {"include_usage": True}},
                               headers=bearer(key or d.key))
    assert resp.status == 200, await resp.text()
    events = sse_payloads(await resp.text())
    assert events[-1] == "[DONE]"
    return events[:-1]


def joined(events: list[Any], field: str) -> str:
    return "".join(c["delta"].get(field, "") for e in events for c in e["choices"])


async def test_answer_and_reasoning_come_apart(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=thinker())
    body = await d.post_json(CHAT, BODY)
    message = body["choices"][0]["message"]
    assert message["content"] == ANSWER
    assert message["reasoning_content"] == message["reasoning"] == REASONING
    assert body["usage"]["completion_tokens"] == 8
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": REASONING_TOKENS}

    events = await stream(d, BODY)
    assert joined(events, "content") == ANSWER
    assert joined(events, "reasoning_content") == joined(events, "reasoning") == REASONING
    assert "</think>" not in joined(events, "content") + joined(events, "reasoning_content")
    assert events[-1]["usage"]["completion_tokens_details"] == {
        "reasoning_tokens": REASONING_TOKENS}
    # Reasoning first, then the answer, each delta carrying one kind.
    kinds = [("r" if "reasoning_content" in c["delta"] else "") + ("a" if c["delta"].get(
        "content") else "") for e in events for c in e["choices"]]
    assert "ra" not in kinds and "".join(k for k in kinds if k).startswith("rrr")


async def test_tag_never_closed_is_all_reasoning(make_daemon: MakeDaemon) -> None:
    """What a random-weight model does: the reasoning never ends; there is no answer."""
    d = await make_daemon(engine=thinker(think_close=False))
    body = await d.post_json(CHAT, {**BODY, "max_tokens": 3})
    message = body["choices"][0]["message"]
    assert message["content"] == "" and message["reasoning_content"] == REASONING
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}


async def test_plain_model_answers_as_before(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    body = await d.post_json(CHAT, BODY)
    assert set(body["choices"][0]["message"]) == {"role", "content"}
    assert "completion_tokens_details" not in body["usage"]
    events = await stream(d, BODY)
    assert not joined(events, "reasoning_content")
    assert "completion_tokens_details" not in events[-1]["usage"]


async def test_n_choices_split_each(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=thinker())
    body = await d.post_json(CHAT, {**BODY, "n": 2})
    assert [c["message"]["reasoning_content"] for c in body["choices"]] == [REASONING] * 2
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2 * REASONING_TOKENS}


async def test_simple_chat_and_completions(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=thinker())
    assert await d.post_json("/chat", {"prompt": "hi", "max_tokens": 8}) == {"response": ANSWER}
    # A raw completion is text in, text out: nothing is split.
    body = await d.post_json("/v1/completions", {"prompt": "hi", "max_tokens": 5})
    assert body["choices"][0]["text"] == "r0 r1 r2</think>tok0"
    assert "completion_tokens_details" not in body["usage"]


async def test_role_without_reasoning_gets_the_answer_only(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=thinker(),
                          env={"DEEPSEEKD_REASONING__RETURN_TO_ROLES": "admin"})
    body = await d.post_json(CHAT, {**BODY, "logprobs": True, "top_logprobs": 1})
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": ANSWER}
    assert choice["logprobs"] is None  # they would spell out the reasoning
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": REASONING_TOKENS}
    events = await stream(d, {**BODY, "logprobs": True})
    assert joined(events, "content") == ANSWER
    assert not any("reasoning_content" in c["delta"] or "reasoning" in c["delta"] or
                   c["logprobs"] for e in events for c in e["choices"])
    # Their history keeps a hash, never the text.
    conv = await ok_json(await d.client.get(
        f"/v1/conversations/{await body_conversation(d)}", headers=d.auth))
    turn = conv["turns"][0]
    assert "reasoning_content" not in turn and turn["reasoning_hmac"]
    # An admin, on the list, sees it.
    admin = await d.app[ACCOUNTS].create_user("boss", "admin")
    body = await d.post_json(CHAT, BODY, headers=bearer(admin.api_key))
    assert body["choices"][0]["message"]["reasoning_content"] == REASONING


async def body_conversation(d: Daemon) -> str:
    (cid,) = (await raw_sql(d, "SELECT id FROM conversations ORDER BY created_at LIMIT 1"))[0]
    return str(cid)


async def test_history_stores_the_reasoning_sealed(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=thinker())
    resp = await d.post(CHAT, BODY)
    first = await ok_json(resp)
    cid = resp.headers["X-Conversation-Id"]
    # The client resends the answer without its reasoning, as OpenAI clients do.
    follow = {"messages": [*BODY["messages"],
                           {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                           {"role": "user", "content": "and three plus three"}],
              "max_tokens": 8, "conversation_id": cid}
    await ok_json(await d.post(CHAT, follow))
    conv = await ok_json(await d.client.get(f"/v1/conversations/{cid}", headers=d.auth))
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
    assert all(m.get("reasoning_content") == REASONING
               for m in conv["messages"] if m["role"] == "assistant")
    turn = conv["turns"][0]
    assert turn["answer"] == ANSWER and turn["reasoning_content"] == REASONING
    assert turn["usage"]["completion_tokens_details"] == {"reasoning_tokens": REASONING_TOKENS}
    assert "reasoning_hmac" not in turn
    export = await ok_json(await d.client.get("/v1/me/export", headers=d.auth))
    assert export["conversations"][0]["turns"][0]["reasoning_content"] == REASONING
    # Sealed at rest: the database holds ciphertext only.
    rows = (await raw_sql(d, "SELECT reasoning_ct, reasoning_hmac, reasoning_tokens FROM turns"))
    assert all(ct and REASONING.encode() not in ct and h is None and n == REASONING_TOKENS
               for ct, h, n in rows)
    # The audit event says how much was reasoning, never what.
    details = (await raw_sql(d, "SELECT detail FROM audit_events WHERE action = 'inference'"))
    assert details == [(f"reasoning_tokens={REASONING_TOKENS}",)] * 2


async def test_history_hash_keeps_only_an_hmac(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=thinker(), env={"DEEPSEEKD_REASONING__HISTORY": "hash"})
    resp = await d.post(CHAT, BODY)
    body = await ok_json(resp)
    assert body["choices"][0]["message"]["reasoning_content"] == REASONING  # still returned
    conv = await ok_json(await d.client.get(
        f"/v1/conversations/{resp.headers['X-Conversation-Id']}", headers=d.auth))
    turn = conv["turns"][0]
    assert "reasoning_content" not in turn and "reasoning_content" not in conv["messages"][1]
    assert turn["reasoning_hmac"] == d.app[AUDIT].content_hmac(REASONING)
    # Keyed: a plain hash of the text is not it, so the HMAC cannot be checked by guessing.
    assert turn["reasoning_hmac"] != hashlib.sha256(REASONING.encode()).hexdigest()
    assert (await raw_sql(d, "SELECT reasoning_ct FROM turns")) == [(None,)]
    assert hmac.compare_digest((await raw_sql(d, "SELECT reasoning_hmac FROM turns"))[0][0],
                               turn["reasoning_hmac"])


async def test_history_drop_keeps_nothing(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=thinker(), env={"DEEPSEEKD_REASONING__HISTORY": "drop"})
    resp = await d.post(CHAT, BODY)
    await ok_json(resp)
    conv = await ok_json(await d.client.get(
        f"/v1/conversations/{resp.headers['X-Conversation-Id']}", headers=d.auth))
    turn = conv["turns"][0]
    assert "reasoning_content" not in turn and "reasoning_hmac" not in turn
    assert turn["usage"]["completion_tokens_details"] == {"reasoning_tokens": REASONING_TOKENS}
    assert (await raw_sql(d, "SELECT reasoning_ct, reasoning_hmac FROM turns")) == [(None, None)]


async def test_metrics_and_quota_count_reasoning_apart(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=thinker())
    counted = await d.app[ACCOUNTS].create_user("counted", "user", daily_token_limit=1000)
    scraper = await d.app[ACCOUNTS].create_user("prom", "metrics")
    await d.post_json(CHAT, BODY, headers=bearer(counted.api_key))
    await stream(d, BODY, key=counted.api_key)
    resp = await d.client.get("/metrics", headers=bearer(scraper.api_key))
    samples = {s.name: s.value for fam in text_string_to_metric_families(await resp.text())
               for s in fam.samples}
    assert samples["deepseekd_reasoning_tokens_total"] == 2 * REASONING_TOKENS
    assert samples["deepseekd_completion_tokens_total"] >= 2 * 8
    export = await ok_json(await d.client.get("/v1/me/export", headers=bearer(counted.api_key)))
    (day,) = export["daily_usage"]
    assert day["reasoning_tokens"] == 2 * REASONING_TOKENS
    assert day["tokens"] > day["reasoning_tokens"]  # the limit counts everything
