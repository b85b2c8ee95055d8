"""OpenAI / DeepSeek API parity over HTTP, on the fake engine: structured outputs, tool
calling, cached-token usage, chat prefix completion, and the fields that would change the
answer (honoured or refused, never ignored). The real engine runs the same requests in
tests/e2e/test_parity_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deepseekd.engine.types import Structured
from deepseekd.http.state import ACCOUNTS
from tests.api.conftest import MODEL, Daemon, MakeDaemon
from tests.api.helpers import bearer, error, ok_json
from tests.api.test_http import sse_chunks
from tests.api.test_observability import _metrics
from tests.fakes import FakeEngine

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ASK = [{"role": "user", "content": "what is the weather in Paris"}]
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city"],
}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather", "parameters": WEATHER_PARAMS}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}}}}


def engine(**kw: Any) -> FakeEngine:
    return FakeEngine(model_name=MODEL, max_model_len=4096, **kw)


def last_options(d: Daemon) -> Any:
    return d.engine.requests[-1][1]


async def stream(d: Daemon, body: dict[str, Any], key: str | None = None) -> list[dict[str, Any]]:
    resp = await d.client.post(CHAT, json={**body, "stream": True,
                                           "stream_options": {"include_usage": True}},
                               headers=bearer(key or d.key))
    text = await resp.text()
    assert resp.status == 200, text
    return sse_chunks(text)


def streamed_calls(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool-call deltas put together as a client SDK does (by index; arguments appended)."""
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        for choice in c["choices"]:
            for tc in choice["delta"].get("tool_calls") or []:
                cur = calls.setdefault(tc["index"], {"id": None, "name": None, "arguments": ""})
                if tc.get("id"):
                    assert cur["id"] is None, "a call's id is sent once"
                    cur["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    cur["name"] = fn["name"]
                cur["arguments"] += fn.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


def finish(chunks: list[dict[str, Any]]) -> str | None:
    reasons = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert len(reasons) == 1, reasons
    return reasons[0]


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])


# --------------------------------------------------------------------------- structured outputs


async def test_json_schema_reaches_guided_decoding(make_daemon: MakeDaemon) -> None:
    answer = '{"city": "Paris"}'
    d = await make_daemon(engine=engine(script=answer))
    body = await ok_json(await d.post(CHAT, {"messages": ASK, "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": WEATHER_PARAMS, "strict": True}}}))
    assert body["choices"][0]["message"]["content"] == answer
    assert last_options(d).structured == Structured(
        "json_schema", WEATHER_PARAMS, "response_format.json_schema.schema")

    await ok_json(await d.post(CHAT, {"messages": ASK,
                                      "response_format": {"type": "json_object"}}))
    assert last_options(d).structured.kind == "json_object"
    await ok_json(await d.post(CHAT, {"messages": ASK, "response_format": {"type": "text"}}))
    assert last_options(d).structured is None
    # Completions take the same constraint, and vLLM's guided_* extras.
    await ok_json(await d.post(COMPLETIONS, {"prompt": "x", "max_tokens": 4,
                                             "response_format": {"type": "json_object"}}))
    assert last_options(d).structured.kind == "json_object"
    await ok_json(await d.post(CHAT, {"messages": ASK, "guided_choice": ["yes", "no"]}))
    assert last_options(d).structured == Structured("choice", ("yes", "no"), "guided_choice")
    await ok_json(await d.post(CHAT, {"messages": ASK, "guided_regex": r"\d+"}))
    assert last_options(d).structured == Structured("regex", r"\d+", "guided_regex")


DEEP: dict[str, Any] = {"type": "object"}
for _ in range(40):
    DEEP = {"type": "object", "properties": {"x": DEEP}}


@pytest.mark.parametrize(("body", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": 12}}}}, "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": DEEP}}}, "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"enum": ["a" * 100] * 1000}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a+"}, "guided_regex"),
    ({"guided_regex": "(unclosed"}, "guided_regex"),
    ({"guided_choice": ["yes", ""]}, "guided_choice"),
    ({"guided_json": [1, 2]}, "guided_json"),
])
async def test_bad_constraints_are_400_naming_the_field(
    make_daemon: MakeDaemon, body: dict[str, Any], param: str
) -> None:
    d = await make_daemon(engine=engine(script="{}"))
    before = len(d.engine.requests)
    err = await error(await d.post(CHAT, {"messages": ASK, **body}), 400)
    assert err["param"].startswith(param), err
    assert err["message"].startswith(err["param"])
    assert len(d.engine.requests) == before, "a refused request reached the engine"


# --------------------------------------------------------------------------- refused fields


@pytest.mark.parametrize(("path", "field", "value"), [
    (CHAT, "audio", {"voice": "alloy", "format": "wav"}),
    (CHAT, "modalities", ["text", "audio"]),
    (CHAT, "prediction", {"type": "content", "content": "x"}),
    (CHAT, "web_search_options", {}),
    (CHAT, "functions", [{"name": "f"}]),
    (CHAT, "function_call", "auto"),
    (CHAT, "reasoning_effort", "low"),
    (CHAT, "chat_template", "{{ messages }}"),
    (CHAT, "best_of", 3),
    (COMPLETIONS, "suffix", "def f():"),
    (COMPLETIONS, "echo", True),
    (COMPLETIONS, "best_of", 2),
])
async def test_fields_that_would_change_the_answer_are_refused(
    daemon: Daemon, path: str, field: str, value: Any
) -> None:
    body: dict[str, Any] = (
        {"messages": ASK} if path == CHAT else {"prompt": "hello"}) | {"max_tokens": 2}
    if field != "web_search_options":
        body[field] = value
    else:
        body[field] = {"search_context_size": "low"}
    err = await error(await daemon.post(path, body), 400)
    assert err["param"] == field, err
    # Harmless extras keep working.
    del body[field]
    await ok_json(await daemon.post(path, {**body, "store": False, "metadata": {"a": "b"},
                                           "service_tier": "auto"}))


async def test_logit_bias_is_checked_and_honoured(daemon: Daemon) -> None:
    await ok_json(await daemon.post(CHAT, {"messages": ASK, "max_tokens": 2,
                                           "logit_bias": {"17": -100, "3": 5.5}}))
    assert dict(last_options(daemon).logit_bias) == {17: -100.0, 3: 5.5}
    vocab = daemon.engine.vocab_size
    err = await error(await daemon.post(CHAT, {"messages": ASK,
                                               "logit_bias": {str(vocab): 1}}), 400)
    assert err["param"] == "logit_bias" and str(vocab - 1) in err["message"]
    for bad in ({"hello": 1}, {"5": 101}, {"-1": 1}):
        await error(await daemon.post(CHAT, {"messages": ASK, "logit_bias": bad}), 400,
                    param="logit_bias")
    await ok_json(await daemon.post(CHAT, {"messages": ASK, "max_tokens": 2, "top_k": 5,
                                           "min_p": 0.1, "repetition_penalty": 1.2}))
    opts = last_options(daemon)
    assert (opts.top_k, opts.min_p, opts.repetition_penalty) == (5, 0.1, 1.2)


# --------------------------------------------------------------------------- tools


async def test_named_tool_choice(make_daemon: MakeDaemon) -> None:
    args = '{"city": "Paris", "unit": "C"}'
    d = await make_daemon(engine=engine(script=args))
    req = {"messages": ASK, "tools": [WEATHER, TIME],
           "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    body = await ok_json(await d.post(CHAT, req))
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    msg = choice["message"]
    assert msg["content"] is None
    (call,) = msg["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": args}
    # Guided decoding holds the output to the function's parameters.
    assert last_options(d).structured == Structured("json_schema", WEATHER_PARAMS, "tools")
    # The template was given the tools (this fake's template does not render them, so they
    # are described in a system message).
    messages, tools, _ = d.engine.chats[-1]
    assert tools is None and messages[0]["role"] == "system"
    assert "get_weather" in messages[0]["content"] and "get_time" in messages[0]["content"]

    chunks = await stream(d, req)
    assert finish(chunks) == "tool_calls"
    (scall,) = streamed_calls(chunks)
    assert scall["name"] == "get_weather" and scall["arguments"] == args
    assert scall["id"].startswith("call_")
    assert streamed_text(chunks) == ""
    assert chunks[-1]["usage"]["completion_tokens"] > 0


async def test_required_tool_calls_parallel_and_not(make_daemon: MakeDaemon) -> None:
    out = json.dumps([{"name": "get_weather", "parameters": {"city": "Oslo"}},
                      {"name": "get_time", "parameters": {"zone": "CET"}}])
    d = await make_daemon(engine=engine(script=out))
    req = {"messages": ASK, "tools": [WEATHER, TIME], "tool_choice": "required"}
    body = await ok_json(await d.post(CHAT, req))
    calls = body["choices"][0]["message"]["tool_calls"]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Oslo"}), ("get_time", {"zone": "CET"})]
    assert len({c["id"] for c in calls}) == 2
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    schema = last_options(d).structured.value
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    names = [alt["properties"]["name"]["enum"] for alt in schema["items"]["anyOf"]]
    assert names == [["get_weather"], ["get_time"]]

    chunks = await stream(d, req)
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed_calls(chunks)] == [
        ("get_weather", {"city": "Oslo"}), ("get_time", {"zone": "CET"})]
    assert finish(chunks) == "tool_calls"

    await ok_json(await d.post(CHAT, {**req, "parallel_tool_calls": False}))
    assert last_options(d).structured.value["maxItems"] == 1


async def test_required_cut_short_is_returned_as_text(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine(script='[{"name": "get_weather", "parameters": {"ci'))
    body = await ok_json(await d.post(CHAT, {"messages": ASK, "tools": [WEATHER],
                                             "tool_choice": "required", "max_tokens": 3}))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert "tool_calls" not in choice["message"] or not choice["message"]["tool_calls"]
    assert choice["message"]["content"] == '[{"name": "g'


async def test_auto_tool_calls_read_by_the_parser(make_daemon: MakeDaemon) -> None:
    text = 'Let me look.<call>{"name": "get_weather", "arguments": {"city": "Rome"}}</call>'
    d = await make_daemon(engine=engine(script=text, tool_parser="fake", knows_tools=True))
    req = {"messages": ASK, "tools": [WEATHER]}
    body = await ok_json(await d.post(CHAT, req))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look."
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Rome"}
    assert last_options(d).structured is None  # auto: the model decides, nothing is forced
    _, tools, _ = d.engine.chats[-1]
    assert tools is not None and tools[0]["function"]["name"] == "get_weather"

    chunks = await stream(d, req)
    assert streamed_text(chunks) == "Let me look."
    (scall,) = streamed_calls(chunks)
    assert scall["name"] == "get_weather" and json.loads(scall["arguments"]) == {"city": "Rome"}
    assert finish(chunks) == "tool_calls"

    # A plain answer with tools offered stays a plain answer.
    d.engine.script = "It is sunny."
    body = await ok_json(await d.post(CHAT, req))
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "It is sunny."}
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_tool_choice_none_leaves_the_tools_out(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine(script="No tools needed.", knows_tools=True))
    body = await ok_json(await d.post(CHAT, {"messages": ASK, "tools": [WEATHER],
                                             "tool_choice": "none"}))
    assert body["choices"][0]["message"]["content"] == "No tools needed."
    assert d.engine.chats[-1][1] is None
    assert last_options(d).structured is None


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [WEATHER]}, "tool_choice"),  # auto, and this model has no tool parser
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": [WEATHER, WEATHER], "tool_choice": "required"}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}],
      "tool_choice": "required"}, "tools.0.function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "array"}}}], "tool_choice": "required"}, "tools.0.function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}],
      "tool_choice": "required"}, "tools"),
    ({"tools": [{"type": "retrieval"}], "tool_choice": "required"}, "tools"),
    ({"tools": [WEATHER], "tool_choice": "required",
      "response_format": {"type": "json_object"}}, "response_format"),
])
async def test_bad_tools_are_400_naming_the_field(
    make_daemon: MakeDaemon, body: dict[str, Any], param: str
) -> None:
    d = await make_daemon(engine=engine(script="{}"))
    before = len(d.engine.requests)
    err = await error(await d.post(CHAT, {"messages": ASK, **body}), 400)
    assert err["param"].startswith(param), err
    assert len(d.engine.requests) == before


ROUND_TRIP = [
    *ASK,
    {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
]


async def test_tool_round_trip_reaches_the_template(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine(script="It is 21 degrees.", tool_parser="fake",
                                        knows_tools=True))
    body = await ok_json(await d.post(CHAT, {"messages": ROUND_TRIP, "tools": [WEATHER]}))
    assert body["choices"][0]["message"]["content"] == "It is 21 degrees."
    messages, tools, _ = d.engine.chats[-1]
    assert tools is not None
    # Templates render arguments with tojson: they get an object, not a string.
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}

    # A template without tools gets the call and the result spelled out in text.
    d.engine.chat_template_knows_tools = False
    await ok_json(await d.post(CHAT, {"messages": ROUND_TRIP, "tools": [WEATHER],
                                      "tool_choice": "none"}))
    messages, tools, _ = d.engine.chats[-1]
    assert tools is None
    assert 'get_weather({"city": "Paris"})' in messages[1]["content"]
    assert messages[2]["content"].startswith("[result of call_1]")

    for bad, param in (
        ([*ASK, {"role": "tool", "content": "x"}], "messages"),
        ([{"role": "user", "content": "x", "tool_calls": ROUND_TRIP[1]["tool_calls"]}],
         "messages"),
    ):
        err = await error(await d.post(CHAT, {"messages": bad}), 400)
        assert err["param"].startswith(param), err


async def test_history_keeps_tool_calls(make_daemon: MakeDaemon) -> None:
    args = '{"city": "Lima"}'
    d = await make_daemon(engine=engine(script=args))
    resp = await d.post(CHAT, {"messages": ASK, "tools": [WEATHER], "tool_choice": {
        "type": "function", "function": {"name": "get_weather"}}})
    body = await ok_json(resp)
    cid = resp.headers["X-Conversation-Id"]
    call = body["choices"][0]["message"]["tool_calls"][0]
    follow = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
              {"role": "tool", "tool_call_id": call["id"], "content": "18 C"}]
    d.engine.script = "It is 18 C in Lima."
    await ok_json(await d.post(CHAT, {"messages": follow, "conversation_id": cid,
                                      "tools": [WEATHER], "tool_choice": "none"}))
    conv = await ok_json(await d.client.get(f"/v1/conversations/{cid}", headers=d.auth))
    flat = conv["messages"]
    assert flat[0] == ASK[0]
    assert flat[1]["role"] == "assistant" and flat[1]["tool_calls"] == [call]
    assert flat[2] == {"role": "tool", "tool_call_id": call["id"], "content": "18 C"}
    assert flat[3] == {"role": "assistant", "content": "It is 18 C in Lima."}
    # Sealed: the arguments are nowhere in the database file in clear.
    for f in Path(d.settings.data_dir).glob("deepseekd.db*"):
        assert b"Lima" not in f.read_bytes(), f


# --------------------------------------------------------------------------- cached tokens


async def test_cached_tokens_per_user(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine())
    other = await d.app[ACCOUNTS].create_user("other", "user")
    long_ask = [{"role": "user", "content": " ".join(f"w{i}" for i in range(40))}]
    req = {"messages": long_ask, "max_tokens": 2}
    first = await ok_json(await d.post(CHAT, req))
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    again = await ok_json(await d.post(CHAT, req))
    cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0
    assert again["usage"]["prompt_cache_hit_tokens"] == cached
    assert again["usage"]["prompt_cache_miss_tokens"] == again["usage"]["prompt_tokens"] - cached
    # Another user's identical prompt learns nothing from the first user's cache.
    resp = await d.client.post(CHAT, json=req, headers=bearer(other.api_key))
    theirs = await ok_json(resp)
    assert theirs["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert d.engine.requests[-1][1].cache_salt != d.engine.requests[-2][1].cache_salt
    chunks = await stream(d, req)
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == cached

    ops = await d.app[ACCOUNTS].create_user("ops", "metrics")
    m = await _metrics(d, ops.api_key)
    (sample,) = m["deepseekd_prompt_cached_tokens_total"]
    assert sample.value >= 2 * cached


# --------------------------------------------------------------------------- prefix completion


async def test_chat_prefix_completion(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(engine=engine(script=" world!"))
    msgs = [*ASK, {"role": "assistant", "content": "Hello", "prefix": True}]
    body = await ok_json(await d.post(CHAT, {"messages": msgs}))
    # The answer is the continuation (DeepSeek's shape); the prefix reached the template
    # as the start of the assistant's turn.
    assert body["choices"][0]["message"]["content"] == " world!"
    messages, _, continue_final = d.engine.chats[-1]
    assert continue_final is True
    assert messages[-1] == {"role": "assistant", "content": "Hello"}

    for bad in (
        [{"role": "user", "content": "x", "prefix": True}],
        [{"role": "assistant", "content": "a", "prefix": True}, *ASK],
    ):
        err = await error(await d.post(CHAT, {"messages": bad}), 400)
        assert err["param"].startswith("messages"), err
