"""DeepSeek's architectures and R1 reasoning on the real daemon and the real vLLM CPU engine:
tiny random-weight DeepseekV3ForCausalLM (MLA + MoE noaux_tc) and Qwen2ForCausalLM (the
R1-Distill family) models with R1's chat template, imported with the real `deepseekd model
import` into a data dir of their own, served one at a time.

Random weights never close the think tag, so every answer is reasoning only: content empty,
reasoning_content full, all output tokens reasoning tokens. The split on closed tags is
tested on token sequences in tests/unit/test_reasoning_split.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.e2e.conftest import Daemon, cli, start_daemon
from tests.support import tiny_models
from tests.support.process import clean_env

MODELS = {"tiny-r1-deepseek-v3": "deepseek_v3", "tiny-r1-distill-qwen2": "qwen2"}
PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def r1_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], str]:
    """A data dir holding the two tiny models, imported by the CLI; (env, admin key)."""
    work = tmp_path_factory.mktemp("tiny-r1")
    base = tiny_models.base_tokenizer(work / "smollm2-tokenizer")
    data = work / "data"
    env = clean_env()  # on a GPU box: a small share of the GPU
    env.update({
        "DEEPSEEKD_DATA_DIR": str(data),
        "DEEPSEEKD_ENGINE__ENFORCE_EAGER": "true",
        "DEEPSEEKD_ENGINE__KV_CACHE_GIB": "1",
        "DEEPSEEKD_ENGINE__MAX_MODEL_LEN": "1024",
        "DEEPSEEKD_ENGINE__MODEL": "tiny-r1-distill-qwen2",
    })
    for name, kind in MODELS.items():
        src = tiny_models.build(kind, work / "src" / name, base)
        res = cli("model", "import", str(src), "--name", name, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        assert json.loads(res.stdout)["format"] == "hf"
    res = cli("init", env=env, timeout=600)  # the model is there: nothing else is imported
    assert res.returncode == 0, res.stderr[-3000:]
    return env, json.loads(res.stdout)["api_key"]


def test_both_architectures_were_imported(r1_env: tuple[dict[str, str], str]) -> None:
    env, _ = r1_env
    res = cli("model", "list", "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert sorted(m["name"] for m in json.loads(res.stdout)) == sorted(MODELS)
    models = Path(env["DEEPSEEKD_DATA_DIR"]) / "models"
    v3 = json.loads((models / "tiny-r1-deepseek-v3" / "config.json").read_text())
    assert v3["architectures"] == ["DeepseekV3ForCausalLM"]
    assert (v3["kv_lora_rank"], v3["qk_rope_head_dim"], v3["topk_method"]) == (512, 64, "noaux_tc")
    qwen = json.loads((models / "tiny-r1-distill-qwen2" / "config.json").read_text())
    assert qwen["architectures"] == ["Qwen2ForCausalLM"]


def test_unknown_reasoning_parser_stops_before_the_model_loads(
        r1_env: tuple[dict[str, str], str]) -> None:
    env, _ = r1_env
    res = subprocess.run([sys.executable, "-m", "deepseekd", "serve"],
                         env={**env, "DEEPSEEKD_ENGINE__REASONING_PARSER": "deepseek_r9"},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "engine.reasoning_parser" in res.stderr and "'deepseek_r9'" in res.stderr
    assert "deepseek_r1" in res.stderr  # the choices are listed


@pytest.fixture(scope="module", params=sorted(MODELS), ids=lambda n: MODELS[n])
def served(request: pytest.FixtureRequest, r1_env: tuple[dict[str, str], str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Daemon, str]]:
    """One model at a time, for all the tests of this module. The DeepSeek-V3 one keeps
    only a hash of the reasoning in history. Guided JSON is compact: random weights would
    otherwise spend their budget on the blanks JSON allows between tokens."""
    env, key = r1_env
    name = request.param
    history = "hash" if MODELS[name] == "deepseek_v3" else "store"
    d = start_daemon(env, key, tmp_path_factory.mktemp("logs") / "daemon.log",
                     DEEPSEEKD_ENGINE__MODEL=name, DEEPSEEKD_REASONING__HISTORY=history,
                     DEEPSEEKD_ENGINE__STRUCTURED_OUTPUTS_BACKEND="xgrammar",
                     DEEPSEEKD_ENGINE__STRUCTURED_OUTPUTS_COMPACT="true")
    try:
        yield name, d, history
    finally:
        assert d.stop() == 0


@pytest.fixture(scope="module")
def think_end_id(tmp_path_factory: pytest.TempPathFactory) -> int:
    base = tiny_models.base_tokenizer(tmp_path_factory.mktemp("tok") / "smollm2")
    return int(tiny_models.r1_tokenizer(base).convert_tokens_to_ids(tiny_models.THINK_END))


def extra(obj: Any, field: str) -> Any:
    return (obj.model_extra or {}).get(field)


def test_reasoning_model_end_to_end(served: tuple[str, Daemon, str]) -> None:
    name, d, history = served
    lines = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
    picked = [rec for rec in lines if rec.get("msg") == "reasoning parser"
              or rec.get("message") == "reasoning parser"]
    assert picked and picked[0]["reasoning_parser"] == "deepseek_r1", d.log()[-3000:]

    client = openai.OpenAI(base_url=d.url + "/v1", api_key=d.key, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == [name]
    raw = client.chat.completions.with_raw_response.create(
        model=name, messages=PROMPT, max_tokens=12, temperature=0)
    resp = raw.parse()
    message = resp.choices[0].message
    reasoning = extra(message, "reasoning_content")
    assert isinstance(reasoning, str) and reasoning.strip()
    assert extra(message, "reasoning") == reasoning
    assert message.content == ""  # the think tag was never closed
    assert "</think>" not in reasoning
    usage = resp.usage
    assert usage.completion_tokens_details.reasoning_tokens == usage.completion_tokens > 0

    stream = client.chat.completions.create(
        model=name, messages=PROMPT, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True})
    streamed, content, final = "", "", None
    for chunk in stream:
        if chunk.usage is not None:
            final = chunk.usage
        for ch in chunk.choices:
            streamed += extra(ch.delta, "reasoning_content") or ""
            content += ch.delta.content or ""
    assert (streamed, content) == (reasoning, "")
    assert final is not None and final.completion_tokens_details.reasoning_tokens == \
        usage.completion_tokens_details.reasoning_tokens

    cid = raw.headers["X-Conversation-Id"]
    conv = httpx.get(f"{d.url}/v1/conversations/{cid}", headers=d.headers(), timeout=30).json()
    turn = conv["turns"][0]
    assert turn["usage"]["completion_tokens_details"]["reasoning_tokens"] == \
        usage.completion_tokens
    if history == "store":
        assert turn["reasoning_content"] == reasoning
        assert conv["messages"][-1] == {"role": "assistant", "content": "",
                                        "reasoning_content": reasoning}
    else:
        assert "reasoning_content" not in turn and len(turn["reasoning_hmac"]) == 64

    metrics = httpx.get(f"{d.url}/metrics", headers=d.headers(), timeout=30).text
    (line,) = [x for x in metrics.splitlines() if x.startswith("deepseekd_reasoning_tokens_total")]
    assert float(line.split()[-1]) >= 2 * usage.completion_tokens


CHOICE = {"type": "object", "properties": {
    "answer": {"type": "string", "enum": ["four", "five"]},
    "sure": {"type": "boolean"}},
    "required": ["answer", "sure"], "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "enum": [1, 2, 3]},
                                     "b": {"type": "integer", "enum": [1, 2, 3]}},
    "required": ["a", "b"], "additionalProperties": False}}}


def test_structured_answer_and_tool_call_after_reasoning(served: tuple[str, Daemon, str],
                                                         think_end_id: int) -> None:
    """The constraint holds the answer, not the reasoning: the reasoning is free, the answer
    after </think> follows the schema. Random weights never close the think tag on their
    own, so a logit bias on </think> closes it (also a check that logit_bias reaches vLLM)."""
    name, d, _ = served
    client = openai.OpenAI(base_url=d.url + "/v1", api_key=d.key, max_retries=0, timeout=120)
    close = {str(think_end_id): 100}
    resp = client.chat.completions.create(
        model=name, messages=PROMPT, max_tokens=40, temperature=0, logit_bias=close,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "sum", "schema": CHOICE}})
    message = resp.choices[0].message
    assert resp.choices[0].finish_reason == "stop", resp
    jsonschema.validate(json.loads(message.content), CHOICE)
    assert not extra(message, "reasoning_content")  # closed at once: no reasoning

    named = {"type": "function", "function": {"name": "add"}}
    resp = client.chat.completions.create(model=name, messages=PROMPT, tools=[TOOL],
                                          tool_choice=named, max_tokens=40, temperature=0,
                                          logit_bias=close)
    (call,) = resp.choices[0].message.tool_calls
    assert call.function.name == "add" and resp.choices[0].finish_reason == "tool_calls"
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, TOOL["function"]["parameters"])

    stream = client.chat.completions.create(model=name, messages=PROMPT, tools=[TOOL],
                                            tool_choice=named, max_tokens=40, temperature=0,
                                            logit_bias=close, stream=True)
    arguments, finish = "", None
    for chunk in stream:
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or []:
                arguments += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    assert finish == "tool_calls" and json.loads(arguments) == args

    # No tool parser for a template without tool calls: "auto" is refused, not ignored.
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=name, messages=PROMPT, tools=[TOOL], max_tokens=4)
    assert err.value.body["param"] == "tool_choice"


def test_tool_round_trip_and_responses_api(served: tuple[str, Daemon, str],
                                           think_end_id: int) -> None:
    """A full tool round trip and the Responses API, stream and not, through the SDK on a
    reasoning model: the reasoning comes back as a reasoning item, the history keeps it all."""
    name, d, history = served
    client = openai.OpenAI(base_url=d.url + "/v1", api_key=d.key, max_retries=0, timeout=120)
    named = {"type": "function", "function": {"name": "add"}}
    raw = client.chat.completions.with_raw_response.create(
        model=name, messages=PROMPT, tools=[TOOL], tool_choice=named, max_tokens=40,
        temperature=0, logit_bias={str(think_end_id): 100})
    first = raw.parse()
    cid = raw.headers["X-Conversation-Id"]
    call = first.choices[0].message.tool_calls[0]
    follow = [*PROMPT, first.choices[0].message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": "4"}]
    second = client.chat.completions.create(model=name, messages=follow, tools=[TOOL],
                                            tool_choice="none", max_tokens=8, temperature=0,
                                            extra_body={"conversation_id": cid})
    assert second.usage.completion_tokens == 8 and not second.choices[0].message.tool_calls
    conv = httpx.get(f"{d.url}/v1/conversations/{cid}", headers=d.headers(), timeout=30).json()
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert conv["messages"][1]["tool_calls"][0]["function"]["arguments"] == \
        call.function.arguments

    resp = client.responses.create(model=name, input="What is 2 + 2?", max_output_tokens=10,
                                   temperature=0)
    assert resp.status == "incomplete"  # random weights think until the budget runs out
    assert resp.usage.output_tokens == 10
    assert resp.usage.output_tokens_details.reasoning_tokens == 10
    reasoning = [item for item in resp.output if item.type == "reasoning"]
    assert len(reasoning) == 1 and reasoning[0].content[0].text.strip()
    events = list(client.responses.create(model=name, input="What is 2 + 2?",
                                          max_output_tokens=10, temperature=0, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    streamed = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert streamed == reasoning[0].content[0].text
    assert [e.sequence_number for e in events] == list(range(len(events)))
