"""OpenAI / DeepSeek API parity on the real daemon, the real vLLM engine and the embedded model,
through the current `openai` SDK: structured outputs that parse and validate, tool calls
whose arguments follow the function's schema (guided decoding: the embedded model was never
trained for tools), a full tool round trip, cached tokens per user, chat prefix completion.
The tiny DeepSeek-V3 and R1-Distill-Qwen2 models run the same in test_reasoning_models.py."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.e2e.conftest import Daemon, cli

PLACE = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Lyon", "Nice"]},
        "unit": {"type": "string", "enum": ["C", "F"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a French city",
    "parameters": PLACE}}
ASK = [{"role": "user", "content": "What is the weather in Paris? Answer in JSON."}]


@pytest.fixture
def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key=daemon.key, max_retries=0,
                         timeout=300)


def test_json_schema_answer_validates(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=ASK, max_tokens=60, temperature=0,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "place", "schema": PLACE, "strict": True}})
    choice = resp.choices[0]
    assert choice.finish_reason == "stop", choice
    jsonschema.validate(json.loads(choice.message.content), PLACE)

    # The same through the completions API and vLLM's guided_choice extra.
    model = resp.model
    text = client.completions.create(model=model, prompt="Is Paris in France?", max_tokens=60,
                                     temperature=0,
                                     extra_body={"response_format": {
                                         "type": "json_schema",
                                         "json_schema": {"name": "p", "schema": PLACE}}})
    jsonschema.validate(json.loads(text.choices[0].text), PLACE)
    picked = client.chat.completions.create(
        model=model, messages=ASK, max_tokens=10, temperature=0,
        extra_body={"guided_choice": ["sunny", "rainy"]})
    assert picked.choices[0].message.content in ("sunny", "rainy")


def test_bad_schema_is_a_400_naming_response_format(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=client.models.list().data[0].id, messages=ASK, max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "object", "properties": {"a": {"type": 7}}}}})
    assert err.value.body["param"].startswith("response_format")


def call_args(call: Any) -> dict[str, Any]:
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, PLACE)
    return args


def test_named_tool_call_follows_the_schema(client: openai.OpenAI) -> None:
    model = client.models.list().data[0].id
    named = {"type": "function", "function": {"name": "get_weather"}}
    resp = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER],
                                          tool_choice=named, max_tokens=60, temperature=0)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    args = call_args(call)

    stream = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER],
                                            tool_choice=named, max_tokens=60, temperature=0,
                                            stream=True)
    name, arguments, finish = None, "", None
    for chunk in stream:
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or []:
                assert tc.index == 0
                name = tc.function.name or name
                arguments += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    assert (name, finish) == ("get_weather", "tool_calls")
    assert json.loads(arguments) == args  # greedy: the stream says what the answer said


def test_required_tool_calls(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=client.models.list().data[0].id, messages=ASK, tools=[WEATHER],
        tool_choice="required", parallel_tool_calls=False, max_tokens=80, temperature=0)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    call_args(call)


def test_tool_round_trip(client: openai.OpenAI, daemon: Daemon) -> None:
    """Call → the program runs the tool → the tool's result → the answer, as a program using
    the SDK does it; the whole exchange is kept in the user's history."""
    model = client.models.list().data[0].id
    named = {"type": "function", "function": {"name": "get_weather"}}
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=ASK, tools=[WEATHER], tool_choice=named, max_tokens=60,
        temperature=0)
    first = raw.parse()
    cid = raw.headers["X-Conversation-Id"]
    call = first.choices[0].message.tool_calls[0]
    messages: list[Any] = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id,
         "content": json.dumps({"temperature": 21, "sky": "clear"})},
    ]
    second = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=30,
        temperature=0, extra_body={"conversation_id": cid})
    answer = second.choices[0].message
    assert answer.content and not answer.tool_calls
    assert second.usage.prompt_tokens > first.usage.prompt_tokens

    conv = httpx.get(f"{daemon.url}/v1/conversations/{cid}", headers=daemon.headers(),
                     timeout=30).json()
    flat = conv["messages"]
    assert [m["role"] for m in flat] == ["user", "assistant", "tool", "assistant"]
    assert flat[1]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                    "arguments": call.function.arguments}
    assert flat[2]["tool_call_id"] == call.id and flat[3]["content"] == answer.content


def test_auto_without_a_tool_parser_is_a_clear_400(client: openai.OpenAI) -> None:
    """The embedded model's template has no tool calls, so there is no parser to read free
    calls: tool_choice "auto" (the default with tools) is refused, not silently ignored."""
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=client.models.list().data[0].id, messages=ASK,
                                       tools=[WEATHER], max_tokens=5)
    assert err.value.body["param"] == "tool_choice"
    assert "required" in err.value.body["message"]


def test_cached_tokens_are_per_user(client: openai.OpenAI, daemon: Daemon) -> None:
    model = client.models.list().data[0].id
    notes = " ".join(f"Patient {i} was seen on ward {i % 7} and is stable." for i in range(60))
    ask = [{"role": "system", "content": notes}, {"role": "user", "content": "Summarise."}]

    first = client.chat.completions.create(model=model, messages=ask, max_tokens=2)
    again = client.chat.completions.create(model=model, messages=ask, max_tokens=2)
    hit = again.usage.prompt_tokens_details.cached_tokens
    assert hit > 0 and hit <= again.usage.prompt_tokens
    assert (again.usage.model_extra or {})["prompt_cache_hit_tokens"] == hit
    assert (again.usage.model_extra or {})["prompt_cache_miss_tokens"] == \
        again.usage.prompt_tokens - hit
    assert first.usage.prompt_tokens == again.usage.prompt_tokens

    creds = json.loads(cli("user", "add", "cache.probe", "--role", "user",
                           env=daemon.env).stdout)
    other = openai.OpenAI(base_url=daemon.url + "/v1", api_key=creds["api_key"],
                          max_retries=0, timeout=300)
    theirs = other.chat.completions.create(model=model, messages=ask, max_tokens=2)
    assert theirs.usage.prompt_tokens_details.cached_tokens == 0, \
        "another user's identical prompt was served from this user's cache"

    stream = client.chat.completions.create(model=model, messages=ask, max_tokens=2,
                                            stream=True, stream_options={"include_usage": True})
    usage = [c.usage for c in stream if c.usage is not None][-1]
    assert usage.prompt_tokens_details.cached_tokens == hit

    metrics = httpx.get(f"{daemon.url}/metrics", headers=daemon.headers(), timeout=30).text
    (line,) = [x for x in metrics.splitlines()
               if x.startswith("deepseekd_prompt_cached_tokens_total")]
    assert float(line.split()[-1]) >= 2 * hit


def test_chat_prefix_completion(client: openai.OpenAI) -> None:
    model = client.models.list().data[0].id
    ask = [{"role": "user", "content": "Name three colours."}]
    prefix = "The three colours are red,"
    plain = client.chat.completions.create(model=model, messages=ask, max_tokens=12,
                                           temperature=0)
    cont = client.chat.completions.create(
        model=model, max_tokens=12, temperature=0,
        messages=[*ask, {"role": "assistant", "content": prefix, "prefix": True}])  # type: ignore[list-item]
    text = cont.choices[0].message.content
    assert text and not text.startswith(prefix)  # the continuation, as DeepSeek returns it
    assert text != plain.choices[0].message.content
    # The prefix is in the prompt, and no new assistant turn was opened after it.
    assert cont.usage.prompt_tokens > plain.usage.prompt_tokens
