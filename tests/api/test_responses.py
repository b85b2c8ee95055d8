"""``POST /v1/responses`` (OpenAI's Responses API, stateless) over HTTP on the fake engine: it
runs the chat path, so what chat honours (structured outputs, tools, quota, history, audit)
holds here too; what a stateless server cannot honour is a 400 naming the field. The real
``openai`` SDK parses the answers and the events. The real engine: tests/e2e/
test_responses_e2e.py."""

from __future__ import annotations

import json
import re
from typing import Any

import openai
import pytest

from deepseekd.engine.types import Structured
from deepseekd.http.state import ACCOUNTS
from tests.api.conftest import MODEL, Daemon, MakeDaemon
from tests.api.helpers import bearer, error, ok_json
from tests.fakes import FakeEngine, expected_text

RESP = "/v1/responses"
ANSWER = "Hello there, friend. How are you?"
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city"],
}
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather",
           "parameters": WEATHER_PARAMS}
TIME = {"type": "function", "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}
NAMED = {"type": "function", "name": "get_weather"}
ASK = "what is the weather in Paris"


def engine(**kw: Any) -> FakeEngine:
    return FakeEngine(model_name=MODEL, max_model_len=4096, **kw)


def last_options(d: Daemon) -> Any:
    return d.engine.requests[-1][1]


def parse_events(text: str) -> list[dict[str, Any]]:
    """Server-sent events of the Responses API: an ``event:`` line naming the type, then the
    ``data:`` line; checks the two agree and the numbering runs 0, 1, 2, ..."""
    assert text.endswith("\n\n"), text[-200:]
    out = []
    for block in (b for b in text.split("\n\n") if b.strip()):
        head, data = block.split("\n")
        assert head.startswith("event: ") and data.startswith("data: "), block
        event = json.loads(data[len("data: "):])
        assert event["type"] == head[len("event: "):]
        out.append(event)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


async def stream(d: Daemon, body: dict[str, Any], key: str | None = None
                 ) -> tuple[Any, list[dict[str, Any]]]:
    resp = await d.client.post(RESP, json={**body, "stream": True},
                               headers=bearer(key or d.key))
    text = await resp.text()
    assert resp.status == 200, text
    assert resp.content_type == "text/event-stream"
    return resp, parse_events(text)


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def squeeze(kinds: list[str]) -> list[str]:
    """Runs of the same delta event folded into one."""
    out: list[str] = []
    for k in kinds:
        if not (out and out[-1] == k and k.endswith(".delta")):
            out.append(k)
    return out


_ID = re.compile(r"^(resp|msg|fc|rs)_[A-Za-z0-9._-]+$|^call_[A-Za-z0-9]+$")


def normalized(obj: Any) -> Any:
    """``obj`` with ids, times and cache hits left out: what a streamed and an unstreamed
    response share (the second of two equal prompts finds the first in the prefix cache)."""
    if isinstance(obj, dict):
        return {k: ("<id>" if isinstance(v, str) and _ID.match(v) else normalized(v))
                for k, v in obj.items() if k not in ("created_at", "cached_tokens")}
    if isinstance(obj, list):
        return [normalized(v) for v in obj]
    return obj


def check_envelope(body: dict[str, Any], status: str = "completed") -> None:
    assert body["object"] == "response" and body["id"].startswith("resp_")
    assert body["status"] == status and body["model"] == MODEL
    assert body["error"] is None and body["store"] is False
    assert isinstance(body["created_at"], int)
    for key in ("parallel_tool_calls", "tool_choice", "tools", "temperature", "top_p",
                "max_output_tokens", "instructions", "text", "incomplete_details", "metadata"):
        assert key in body, key
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert "cached_tokens" in usage["input_tokens_details"]
    assert "reasoning_tokens" in usage["output_tokens_details"]


# --------------------------------------------------------------------------- text


async def test_text_input_answers_unstreamed_and_streamed(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine(script=ANSWER))
    resp = await d.post(RESP, {"model": MODEL, "input": "hi"})
    body = await ok_json(resp)
    check_envelope(body)
    (item,) = body["output"]
    assert item["type"] == "message" and item["role"] == "assistant"
    assert item["status"] == "completed" and item["id"].startswith("msg_")
    assert item["content"] == [{"type": "output_text", "text": ANSWER, "annotations": [],
                                "logprobs": []}]
    assert body["tool_choice"] == "none" and body["tools"] == []
    assert body["text"] == {"format": {"type": "text"}} and body["metadata"] == {}
    assert resp.headers["X-Request-Id"] in body["id"]
    assert resp.headers["X-Conversation-Id"]
    assert d.engine.chats[-1][0] == [{"role": "user", "content": "hi"}]

    sresp, events = await stream(d, {"model": MODEL, "input": "hi"})
    assert sresp.headers["X-Conversation-Id"] != resp.headers["X-Conversation-Id"]
    assert squeeze(types(events)) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == [] and events[0]["response"]["usage"] is None
    added = events[2]["item"]
    assert added["status"] == "in_progress" and added["content"] == []
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) > 1
    assert all(e["item_id"] == added["id"] and e["output_index"] == 0
               and e["content_index"] == 0 and e["logprobs"] == [] for e in deltas)
    assert "".join(e["delta"] for e in deltas) == ANSWER
    done = {e["type"]: e for e in events}
    assert done["response.output_text.done"]["text"] == ANSWER
    assert done["response.content_part.done"]["part"]["text"] == ANSWER
    assert done["response.output_item.done"]["item"] == {**added, "status": "completed",
                                                         "content": item["content"]}
    final = events[-1]["response"]
    check_envelope(final)
    assert normalized(final) == normalized(body)


async def test_messages_and_instructions_reach_the_template(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine(script="Sure."))
    body = await ok_json(await d.post(RESP, {
        "instructions": "Answer briefly.",
        "input": [
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "Hi, "},
                         {"type": "input_text", "text": "there."}]},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
             "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]},
            {"role": "developer", "content": "Be kind."},
            {"role": "user", "content": "Help me."},
        ],
        "temperature": 0.5, "top_p": 0.9, "max_output_tokens": 50,
        "metadata": {"ticket": "42"}, "user": "someone",
    }))
    assert body["output"][0]["content"][0]["text"] == "Sure."
    assert body["instructions"] == "Answer briefly." and body["metadata"] == {"ticket": "42"}
    assert (body["temperature"], body["top_p"], body["max_output_tokens"]) == (0.5, 0.9, 50)
    messages, tools, _ = d.engine.chats[-1]
    assert tools is None
    assert messages == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hi, there."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "system", "content": "Be kind."},  # developer, as chat renders it
        {"role": "user", "content": "Help me."},
    ]
    options = last_options(d)
    assert (options.temperature, options.top_p, options.max_tokens) == (0.5, 0.9, 50)


async def test_max_output_tokens_makes_it_incomplete(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine())
    body = await ok_json(await d.post(RESP, {"input": "hi", "max_output_tokens": 3}))
    check_envelope(body, "incomplete")
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    (item,) = body["output"]
    assert item["status"] == "incomplete"
    assert item["content"][0]["text"] == expected_text(3)
    assert body["usage"]["output_tokens"] == 3

    _, events = await stream(d, {"input": "hi", "max_output_tokens": 3})
    assert events[-1]["type"] == "response.incomplete"
    assert events[-2]["type"] == "response.output_item.done"
    assert events[-2]["item"]["status"] == "incomplete"
    assert normalized(events[-1]["response"]) == normalized(body)

    # More than the context holds: a 400 naming the Responses field.
    err = await error(await d.post(RESP, {"input": "hi", "max_output_tokens": 10_000}), 400)
    assert err["param"] == "max_output_tokens" and err["message"].startswith(
        "max_output_tokens:"), err


# --------------------------------------------------------------------------- structured outputs


async def test_json_schema_text_format_reaches_guided_decoding(make_daemon: MakeDaemon) -> None:
    answer = '{"city": "Paris"}'
    d = await make_daemon(engine=engine(script=answer))
    fmt = {"type": "json_schema", "name": "place", "schema": WEATHER_PARAMS, "strict": True}
    body = await ok_json(await d.post(RESP, {"input": ASK, "text": {"format": fmt}}))
    assert body["output"][0]["content"][0]["text"] == answer
    assert body["text"] == {"format": fmt}
    assert last_options(d).structured == Structured(
        "json_schema", WEATHER_PARAMS, "response_format.json_schema.schema")
    await ok_json(await d.post(RESP, {"input": ASK, "text": {"format": {"type": "json_object"}}}))
    assert last_options(d).structured.kind == "json_object"
    await ok_json(await d.post(RESP, {"input": ASK, "text": {"format": {"type": "text"}}}))
    assert last_options(d).structured is None

    _, events = await stream(d, {"input": ASK, "text": {"format": fmt}})
    assert events[-1]["type"] == "response.completed"
    assert last_options(d).structured.kind == "json_schema"

    before = len(d.engine.requests)
    for bad, param in (
        ({"type": "json_schema", "name": "p", "schema": {"type": 3}}, "text.format.schema"),
        ({"type": "json_schema", "name": "p"}, "text.format"),
        ({"type": "json_schema", "name": "bad name!", "schema": {}}, "text.format.name"),
        ({"type": "grammar"}, "text.format.type"),
    ):
        err = await error(await d.post(RESP, {"input": ASK, "text": {"format": bad}}), 400)
        assert err["param"] == param, (bad, err)
    err = await error(await d.post(RESP, {"input": ASK, "text": {"format": fmt},
                                          "tools": [WEATHER], "tool_choice": "required"}), 400)
    assert err["param"] == "text.format", err  # one output constraint: the tools or the format
    assert len(d.engine.requests) == before, "a refused request reached the engine"


# --------------------------------------------------------------------------- tools


async def test_named_function_call(make_daemon: MakeDaemon) -> None:
    args = '{"city": "Paris", "unit": "C"}'
    d = await make_daemon(engine=engine(script=args))
    req = {"input": ASK, "tools": [WEATHER, TIME], "tool_choice": NAMED}
    body = await ok_json(await d.post(RESP, req))
    check_envelope(body)
    (call,) = body["output"]
    assert call["type"] == "function_call" and call["id"].startswith("fc_")
    assert call["call_id"].startswith("call_") and call["name"] == "get_weather"
    assert call["arguments"] == args and call["status"] == "completed"
    assert body["tool_choice"] == NAMED
    assert body["tools"][0] == {**WEATHER, "strict": None}
    assert last_options(d).structured == Structured("json_schema", WEATHER_PARAMS, "tools")

    _, events = await stream(d, req)
    assert squeeze(types(events)) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    added = events[2]["item"]
    assert added["arguments"] == "" and added["status"] == "in_progress"
    assert added["name"] == "get_weather" and added["call_id"].startswith("call_")
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert all(e["item_id"] == added["id"] and e["output_index"] == 0 for e in deltas)
    assert "".join(e["delta"] for e in deltas) == args
    assert events[-3]["arguments"] == args
    assert events[-2]["item"] == {**added, "arguments": args, "status": "completed"}
    assert normalized(events[-1]["response"]) == normalized(body)


async def test_required_calls_in_parallel(make_daemon: MakeDaemon) -> None:
    out = json.dumps([{"name": "get_weather", "parameters": {"city": "Paris"}},
                      {"name": "get_time", "parameters": {"zone": "CET"}}])
    d = await make_daemon(engine=engine(script=out))
    req = {"input": ASK, "tools": [WEATHER, TIME], "tool_choice": "required"}
    body = await ok_json(await d.post(RESP, req))
    calls = body["output"]
    assert [c["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[1]["arguments"]) == {"zone": "CET"}
    assert len({c["call_id"] for c in calls}) == 2 and len({c["id"] for c in calls}) == 2
    _, events = await stream(d, req)
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.added"] \
        == [0, 1]
    assert normalized(events[-1]["response"]) == normalized(body)
    await ok_json(await d.post(RESP, {**req, "parallel_tool_calls": False}))
    assert last_options(d).structured.value["maxItems"] == 1


async def test_auto_tool_call_after_text(make_daemon: MakeDaemon) -> None:
    text = 'Let me look. <call>{"name": "get_weather", "arguments": {"city": "Paris"}}</call>'
    d = await make_daemon(engine=engine(script=text, tool_parser="fake", knows_tools=True))
    req = {"input": ASK, "tools": [WEATHER]}
    body = await ok_json(await d.post(RESP, req))
    message, call = body["output"]
    assert message["type"] == "message" and message["content"][0]["text"].strip() == "Let me look."
    assert call["type"] == "function_call" and json.loads(call["arguments"]) == {"city": "Paris"}
    assert body["tool_choice"] == "auto"
    _, tools, _ = d.engine.chats[-1]
    assert tools is not None and tools[0]["function"]["name"] == "get_weather"

    _, events = await stream(d, req)
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert json.loads(final["output"][1]["arguments"]) == {"city": "Paris"}
    added = [e["item"]["type"] for e in events if e["type"] == "response.output_item.added"]
    assert added == ["message", "function_call"]


async def test_function_call_round_trip_reaches_the_template(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine(script="It is 21 degrees.", tool_parser="fake",
                                        knows_tools=True))
    items = [
        {"role": "user", "content": ASK},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [
            {"type": "reasoning_text", "text": "the user wants the weather"}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Paris"}', "status": "completed"},
        {"type": "function_call", "call_id": "call_2", "name": "get_time",
         "arguments": '{"zone": "CET"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": '{"temp": 21}'},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "12:00"}]},
    ]
    body = await ok_json(await d.post(RESP, {"input": items, "tools": [WEATHER, TIME]}))
    assert body["output"][0]["content"][0]["text"] == "It is 21 degrees."
    messages, tools, _ = d.engine.chats[-1]
    assert tools is not None
    assert messages[0] == {"role": "user", "content": ASK}
    # The calls of one turn are one assistant message; the reasoning was left out.
    assert messages[1]["role"] == "assistant" and len(messages) == 4
    calls = messages[1]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_1", "call_2"]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}
    assert messages[3] == {"role": "tool", "tool_call_id": "call_2", "content": "12:00"}


async def test_history_keeps_the_responses_turn(make_daemon: MakeDaemon) -> None:
    args = '{"city": "Lima"}'
    d = await make_daemon(engine=engine(script=args))
    resp = await d.post(RESP, {"input": ASK, "tools": [WEATHER], "tool_choice": NAMED})
    body = await ok_json(resp)
    cid = resp.headers["X-Conversation-Id"]
    call = body["output"][0]
    listed = await ok_json(await d.client.get("/v1/conversations", headers=d.auth))
    assert cid in [c["id"] for c in listed["data"]]
    conv = await ok_json(await d.client.get(f"/v1/conversations/{cid}", headers=d.auth))
    assert conv["messages"][0] == {"role": "user", "content": ASK}
    (kept,) = conv["messages"][1]["tool_calls"]
    assert kept["id"] == call["call_id"] and kept["function"]["arguments"] == args

    # deepseekd's conversation_id appends the next turn to the same conversation.
    d.engine.script = "It is 18 C in Lima."
    follow = [{"role": "user", "content": ASK}, call,
              {"type": "function_call_output", "call_id": call["call_id"], "output": "18 C"}]
    resp = await d.post(RESP, {"input": follow, "tools": [WEATHER], "tool_choice": "none",
                               "conversation_id": cid})
    await ok_json(resp)
    assert resp.headers["X-Conversation-Id"] == cid
    conv = await ok_json(await d.client.get(f"/v1/conversations/{cid}", headers=d.auth))
    assert conv["messages"][-1] == {"role": "assistant", "content": "It is 18 C in Lima."}


# --------------------------------------------------------------------------- refusals


REFUSED = [
    ("previous_response_id", "resp_123", "previous_response_id"),
    ("store", True, "store"),
    ("background", True, "background"),
    ("conversation", "conv_123", "conversation"),
    ("conversation", {"id": "conv_123"}, "conversation"),
    ("include", ["reasoning.encrypted_content"], "include"),
    ("reasoning", {"effort": "low"}, "reasoning"),
    ("prompt", {"id": "pmpt_1"}, "prompt"),
    ("truncation", "auto", "truncation"),
    ("max_tool_calls", 2, "max_tool_calls"),
    ("top_logprobs", 3, "top_logprobs"),
    ("text", {"verbosity": "low"}, "text.verbosity"),
    ("messages", [{"role": "user", "content": "x"}], "messages"),
    ("response_format", {"type": "json_object"}, "response_format"),
    ("max_tokens", 5, "max_tokens"),
    ("stop", ["x"], "stop"),
    ("seed", 3, "seed"),
]


@pytest.mark.parametrize(("field", "value", "param"), REFUSED,
                         ids=[f"{f}={v!r}" for f, v, _ in REFUSED])
async def test_fields_that_need_state_or_change_the_answer_are_refused(
    daemon: Daemon, field: str, value: Any, param: str
) -> None:
    before = len(daemon.engine.requests)
    err = await error(await daemon.post(RESP, {"input": "hi", field: value}), 400,
                      "invalid_value")
    assert err["param"] == param, err
    assert err["message"].startswith(f"{param}:"), err
    if field in ("previous_response_id", "store", "background", "conversation", "prompt",
                 "truncation", "include"):
        assert "stateless" in err["message"], err
    assert len(daemon.engine.requests) == before, "a refused request reached the engine"


BAD_INPUT = [
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 5}]}, "input"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "bad name!",
                 "arguments": "{}"}]}, "input"),
    ({"input": []}, "input"),
    ({"input": "word " * 100}, "input"),  # more than this fake's context of 64 tokens
    ({"input": 5}, "input"),
    ({}, "input"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools"),
    ({"input": "hi", "tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools"),
    ({"input": "hi", "tools": [{"type": "code_interpreter"}]}, "tools"),
    ({"input": "hi", "tools": [{"type": "function", "function": {"name": "f"}}]},
     "tools.0.name"),
    ({"input": "hi", "tools": [{**WEATHER, "parameters": {"type": 3}}],
      "tool_choice": "required"}, "tools.0.parameters"),
    ({"input": "hi", "tools": [WEATHER, WEATHER], "tool_choice": "required"}, "tools"),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
     "tool_choice"),
    ({"input": "hi", "tools": [WEATHER]}, "tool_choice"),  # auto, and no tool parser here
    ({"input": "hi", "temperature": 3}, "temperature"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "model": "gpt-4o"}, "model"),
]


@pytest.mark.parametrize(("body", "param"), BAD_INPUT, ids=[str(i) for i in range(len(BAD_INPUT))])
async def test_bad_requests_are_400_naming_the_field(
    daemon: Daemon, body: dict[str, Any], param: str
) -> None:
    resp = await daemon.post(RESP, body)
    err = await error(resp, 404 if param == "model" else 400)
    assert err["param"] == param, err
    # Named as the Responses API names them, never as the chat request they became.
    assert err["message"].startswith(param), err
    assert "messages." not in err["message"] and ".function." not in err["message"], err


async def test_harmless_extras_are_accepted(daemon: Daemon) -> None:
    body = await ok_json(await daemon.post(RESP, {
        "input": "hi", "max_output_tokens": 2, "store": False, "truncation": "disabled",
        "metadata": {"a": "b"}, "user": "u1", "service_tier": "auto", "include": [],
        "reasoning": None, "previous_response_id": None, "background": False,
        "parallel_tool_calls": True, "safety_identifier": "x", "prompt_cache_key": "k",
        "stream_options": {"include_obfuscation": False}}))
    assert body["metadata"] == {"a": "b"} and body["user"] == "u1"


# --------------------------------------------------------------------------- access


async def test_quota_counts_and_auth_is_required(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine(script="ok"))
    await error(await d.client.post(RESP, json={"input": "hi"}), 401, "missing_api_key")
    await error(await d.client.post(RESP, json={"input": "hi"}, headers=bearer("sk-nope")),
                401)
    q = await d.app[ACCOUNTS].create_user("quoted", "user", daily_request_limit=1)
    resp = await d.client.post(RESP, json={"input": "hi"}, headers=bearer(q.api_key))
    await ok_json(resp)
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    resp = await d.client.post(RESP, json={"input": "hi", "stream": True},
                               headers=bearer(q.api_key))
    await error(resp, 429, "daily_quota_exceeded")
    listed = await ok_json(await d.client.get("/v1/conversations", headers=bearer(q.api_key)))
    assert len(listed["data"]) == 1


# --------------------------------------------------------------------------- failures, reasoning


async def test_engine_failure_midstream_is_response_failed(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=FakeEngine(model_name=MODEL, fail_after=2),
                          env={"DEEPSEEKD_WARMUP__REQUESTS": "0"})
    resp = await d.post(RESP, {"input": "hi", "max_output_tokens": 5, "stream": True})
    assert resp.status == 200  # the headers went out before the failure
    events = parse_events(await resp.text())
    assert types(events)[-2:] == ["error", "response.failed"]
    assert events[-2]["code"] == "engine_unavailable" and events[-2]["message"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == expected_text(2)


async def test_reasoning_is_a_reasoning_item(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine(think=3, script="Paris."))
    body = await ok_json(await d.post(RESP, {"input": "capital of France?"}))
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "r0 r1 r2"}]
    assert reasoning["summary"] == [] and reasoning["status"] == "completed"
    assert message["content"][0]["text"] == "Paris."
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] > 0

    _, events = await stream(d, {"input": "capital of France?"})
    assert squeeze(types(events))[2:8] == [
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.done",
        "response.content_part.done", "response.output_item.done"]
    assert normalized(events[-1]["response"]) == normalized(body)
    async with sdk(d) as client:
        async with client.responses.stream(model=MODEL, input="capital of France?") as s:
            final = await s.get_final_response()
    assert [i.type for i in final.output] == ["reasoning", "message"]
    assert final.output_text == "Paris."

    # Sent back as input (a client appending the output), it is accepted and left out.
    await ok_json(await d.post(RESP, {"input": [{"role": "user", "content": "hi"}, reasoning,
                                                message, {"role": "user", "content": "more"}]}))
    messages = d.engine.chats[-1][0]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]


async def test_hidden_reasoning_is_left_out(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine(think=3, script="Paris."),
                          env={"DEEPSEEKD_REASONING__RETURN_TO_ROLES": "admin"})
    body = await ok_json(await d.post(RESP, {"input": "capital of France?"}))
    assert [i["type"] for i in body["output"]] == ["message"]
    _, events = await stream(d, {"input": "capital of France?"})
    assert "response.reasoning_text.delta" not in types(events)
    assert normalized(events[-1]["response"]) == normalized(body)


# --------------------------------------------------------------------------- the openai SDK


def sdk(d: Daemon) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(d.client.make_url("/v1")), api_key=d.key,
                              max_retries=0)


async def test_the_openai_sdk_parses_text_answers_and_events(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine(script=ANSWER))
    async with sdk(d) as client:
        resp = await client.responses.create(model=MODEL, input="hi")
        assert resp.output_text == ANSWER and resp.status == "completed"
        assert resp.usage is not None and resp.usage.output_tokens > 0
        events = [e async for e in await client.responses.create(
            model=MODEL, input="hi", stream=True)]
        assert events[-1].type == "response.completed"
        assert events[-1].response.output_text == ANSWER
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert text == ANSWER
        # The SDK's stream helper checks the events' order and identities as it goes.
        async with client.responses.stream(model=MODEL, input="hi") as s:
            async for _ in s:
                pass
            final = await s.get_final_response()
        assert final.output_text == ANSWER
        cut = await client.responses.create(model=MODEL, input="hi", max_output_tokens=2)
        assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"


async def test_the_openai_sdk_calls_functions_and_goes_on(make_daemon: MakeDaemon) -> None:
    args = '{"city": "Paris"}'
    d = await make_daemon(engine=engine(script=args))
    tools: Any = [WEATHER]
    async with sdk(d) as client:
        resp = await client.responses.create(model=MODEL, input=ASK, tools=tools,
                                             tool_choice=NAMED)  # type: ignore[arg-type]
        (call,) = resp.output
        assert call.type == "function_call" and call.name == "get_weather"
        assert json.loads(call.arguments) == {"city": "Paris"}
        events = [e async for e in await client.responses.create(
            model=MODEL, input=ASK, tools=tools, tool_choice=NAMED, stream=True)]
        assert events[-1].type == "response.completed"
        assert events[-1].response.output[0].type == "function_call"
        async with client.responses.stream(model=MODEL, input=ASK, tools=tools,
                                           tool_choice=NAMED) as s:  # type: ignore[arg-type]
            final = await s.get_final_response()
        assert final.output[0].arguments == args  # type: ignore[union-attr]

        # The output goes back as input, with the call's result: the conversation goes on.
        d.engine.script = "It is 21 degrees in Paris."
        follow: Any = [{"role": "user", "content": ASK}, *[i.model_dump() for i in resp.output],
                       {"type": "function_call_output", "call_id": call.call_id,
                        "output": '{"temp": 21}'}]
        done = await client.responses.create(model=MODEL, input=follow, tools=tools,
                                             tool_choice="none")
        assert done.output_text == "It is 21 degrees in Paris."
    # This fake's template renders no tools: the call and its result are spelled out.
    messages = d.engine.chats[-1][0]
    assert f'get_weather({args}) as {call.call_id}' in messages[1]["content"]
    assert messages[2]["content"] == f'[result of {call.call_id}] {{"temp": 21}}'
