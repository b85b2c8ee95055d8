"""``POST /v1/responses`` on the real daemon, the real vLLM engine and the embedded model,
through the `openai` SDK's Responses client: a text answer unstreamed and streamed, and a
named function call whose arguments follow the function's schema (guided decoding)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.e2e.conftest import Daemon

PLACE = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Lyon", "Nice"]},
        "unit": {"type": "string", "enum": ["C", "F"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER: Any = {"type": "function", "name": "get_weather",
                "description": "Current weather in a French city", "parameters": PLACE,
                "strict": True}
NAMED: Any = {"type": "function", "name": "get_weather"}
ASK = "What is the weather in Paris?"


@pytest.fixture
def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key=daemon.key, max_retries=0,
                         timeout=300)


def test_text_answer_unstreamed_and_streamed(client: openai.OpenAI) -> None:
    model = client.models.list().data[0].id
    resp = client.responses.create(model=model, input="What is the capital of France?",
                                   instructions="Answer in one short sentence.",
                                   max_output_tokens=24, temperature=0)
    assert resp.status in ("completed", "incomplete") and resp.model == model
    assert resp.output_text.strip()
    assert resp.usage is not None and 0 < resp.usage.output_tokens <= 24
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens

    stream = client.responses.create(model=model, input="What is the capital of France?",
                                     instructions="Answer in one short sentence.",
                                     max_output_tokens=24, temperature=0, stream=True)
    events = list(stream)
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text == resp.output_text  # greedy: the same


def test_named_function_call_follows_the_schema(client: openai.OpenAI) -> None:
    model = client.models.list().data[0].id
    resp = client.responses.create(model=model, input=ASK, tools=[WEATHER], tool_choice=NAMED,
                                   max_output_tokens=60, temperature=0)
    (call,) = resp.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_")
    args = json.loads(call.arguments)
    jsonschema.validate(args, PLACE)

    with client.responses.stream(model=model, input=ASK, tools=[WEATHER], tool_choice=NAMED,
                                 max_output_tokens=60, temperature=0) as stream:
        deltas = "".join(e.delta for e in stream
                         if e.type == "response.function_call_arguments.delta")
        final = stream.get_final_response()
    assert json.loads(deltas) == args  # greedy: the stream says what the answer said
    (streamed,) = final.output
    assert streamed.type == "function_call" and json.loads(streamed.arguments) == args

    # The call's result goes back with the output; the model answers in text.
    follow: Any = [{"role": "user", "content": ASK}, *[i.model_dump() for i in resp.output],
                   {"type": "function_call_output", "call_id": call.call_id,
                    "output": json.dumps({"temperature": 21, "sky": "clear"})}]
    answer = client.responses.create(model=model, input=follow, tools=[WEATHER],
                                     tool_choice="none", max_output_tokens=30, temperature=0)
    assert answer.output_text.strip()
    assert answer.usage is not None and answer.usage.input_tokens > resp.usage.input_tokens
