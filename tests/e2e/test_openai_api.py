"""The real daemon, real engine and real model, spoken to with the official OpenAI client."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.e2e.conftest import Daemon

MODEL = "smollm2-135m-instruct"


@pytest.fixture
def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key=daemon.key, max_retries=0,
                         timeout=120)


def test_models_lists_the_embedded_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_completion_answers(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0,
    )
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 5
    assert 0 < resp.usage.completion_tokens <= 24
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.model == MODEL


def test_greedy_is_deterministic_and_seed_reproduces(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "Name three colours."}]
    a = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16, temperature=0)
    b = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    c = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16,
                                       temperature=1.0, seed=1234)
    d = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16,
                                       temperature=1.0, seed=1234)
    assert c.choices[0].message.content == d.choices[0].message.content


def test_streaming_matches_the_whole_answer(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "Tell me about the sea."}]
    whole = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=20,
                                           temperature=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=20, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage, finish, chunks = [], None, None, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            parts.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    assert chunks > 3  # tokens arrived one by one, not in one lump
    assert "".join(parts) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_sampling_parameters_are_honoured(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count: one, two, three, four"}],
        max_tokens=12, temperature=0.7, top_p=0.9, n=3, seed=7, presence_penalty=0.5,
        frequency_penalty=0.5, logprobs=True, top_logprobs=2,
    )
    assert [c.index for c in resp.choices] == [0, 1, 2]
    for c in resp.choices:
        assert c.logprobs is not None and c.logprobs.content
        assert all(len(t.top_logprobs) == 2 for t in c.logprobs.content)
        assert all(t.logprob <= 0 for t in c.logprobs.content)
    stopped = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long sentence about cats."}],
        max_tokens=64, temperature=0, stop=[" "],
    )
    assert " " not in stopped.choices[0].message.content.strip()
    assert stopped.choices[0].finish_reason == "stop"


def test_completions_plain_and_streamed(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=MODEL, prompt="The capital of France is",
                                     max_tokens=8, temperature=0, logprobs=1)
    text = resp.choices[0].text
    assert text.strip()
    assert len(resp.choices[0].logprobs.tokens) == resp.usage.completion_tokens
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt="The capital of France is",
                                           max_tokens=8, temperature=0, stream=True)
        if c.choices
    )
    assert streamed == text


def test_original_chat_endpoint(daemon: Daemon) -> None:
    r = httpx.post(daemon.url + "/chat", json={"prompt": "Hello there"},
                   headers=daemon.headers(), timeout=120)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"response"} and body["response"].strip()


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]},
         openai.NotFoundError, "gpt-4"),
        ({"model": MODEL, "messages": []}, openai.BadRequestError, "messages"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
         openai.BadRequestError, "messages.0.role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000},
         openai.BadRequestError, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2040},
         openai.BadRequestError, "context"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "word " * 3000}]},
         openai.BadRequestError, "context"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 100},
         openai.BadRequestError, "n:"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 9},
         openai.BadRequestError, "temperature"),
    ],
    ids=["unknown-model", "empty-messages", "unknown-role", "above-cap", "beyond-context",
         "prompt-too-long", "n-above-cap", "temperature-range"],
)
def test_bad_requests_get_clear_errors(client: openai.OpenAI, kwargs: dict, error: type,
                                       fragment: str) -> None:
    with pytest.raises(error) as exc:
        client.chat.completions.create(**kwargs)
    body = exc.value.body
    assert set(body) >= {"message", "type", "code"}  # the OpenAI error object
    assert fragment in body["message"]


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400, "invalid_json"),
        (b'{"messages": "hi"}', {"Content-Type": "application/json"}, 400, "invalid_value"),
        (b'{"messages": [{"role": "user"}], "max_tokens": "ten"}',
         {"Content-Type": "application/json"}, 400, "invalid_value"),
        (b"hello", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (b'{"messages": [{"role": "user", "content": "' + b"a" * (5 << 20) + b'"}]}',
         {"Content-Type": "application/json"}, 413, "request_too_large"),
    ],
    ids=["invalid-json", "wrong-type", "wrong-type-max-tokens", "content-type", "too-large"],
)
def test_malformed_http_gets_4xx(daemon: Daemon, content: bytes, headers: dict, status: int,
                                 code: str) -> None:
    r = httpx.post(daemon.url + "/v1/chat/completions", content=content,
                   headers={**daemon.headers(), **headers}, timeout=60)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


def test_missing_or_wrong_key_is_401(daemon: Daemon) -> None:
    for headers in ({}, {"Authorization": "Bearer dsk-wrong"}, {"Authorization": "Basic x"}):
        r = httpx.get(daemon.url + "/v1/models", headers=headers, timeout=10)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(daemon.url + "/healthz", timeout=10).status_code == 200


def test_daemon_keeps_serving_after_bad_input(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Still there?"}], max_tokens=4)
    assert resp.choices[0].message.content is not None


def test_disconnect_aborts_the_engine_request(daemon: Daemon) -> None:
    """A client that goes away mid-stream must not keep the engine busy: the daemon aborts
    the vLLM request (it logs the abort after vLLM acknowledged it) and serves the next."""
    rid = f"disconnect-{time.time_ns()}"
    with httpx.stream("POST", daemon.url + "/v1/chat/completions",
                      headers={**daemon.headers(), "X-Request-Id": rid},
                      json={"messages": [{"role": "user", "content": "Write an essay."}],
                            "max_tokens": 1500, "stream": True, "temperature": 0},
                      timeout=60) as r:
        it = r.iter_lines()
        assert next(it).startswith("data: ")
    wanted = '"engine request aborted"'
    for _ in range(200):  # bounded wait for the log line
        lines = [ln for ln in daemon.log().splitlines() if wanted in ln and rid in ln]
        if lines:
            break
        time.sleep(0.25)
    assert lines, "the engine request was not aborted after the client left"
    r = httpx.post(daemon.url + "/v1/completions", headers=daemon.headers(),
                   json={"prompt": "One", "max_tokens": 2}, timeout=120)
    assert r.status_code == 200
