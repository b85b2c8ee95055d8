"""GenerationOptions → vLLM SamplingParams (imports vLLM, starts no engine)."""

from __future__ import annotations

from typing import Any

import pytest

vllm = pytest.importorskip("vllm")

from vllm import SamplingParams  # noqa: E402
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams  # noqa: E402

from deepseekd.engine import sampling  # noqa: E402
from deepseekd.engine.sampling import to_sampling_params  # noqa: E402
from deepseekd.engine.types import GenerationOptions, Structured  # noqa: E402

FULL = GenerationOptions(
    max_tokens=42,
    temperature=0.7,
    top_p=0.85,
    n=3,
    stop=("\n\n", "END"),
    seed=1234,
    presence_penalty=0.5,
    frequency_penalty=-0.25,
    logprobs=4,
    ignore_eos=True,
    top_k=40,
    min_p=0.05,
    repetition_penalty=1.1,
    logit_bias=((17, -100.0), (3, 2.5)),
    skip_special_tokens=False,
    structured=Structured("json_schema", {"type": "object"}, "response_format"),
)


def test_every_field_is_mapped() -> None:
    params = to_sampling_params(FULL, stream=False)
    assert isinstance(params, SamplingParams)
    assert params.n == 3
    assert params.max_tokens == 42
    assert params.temperature == pytest.approx(0.7)
    assert params.top_p == pytest.approx(0.85)
    assert params.stop == ["\n\n", "END"]
    assert params.seed == 1234
    assert params.presence_penalty == pytest.approx(0.5)
    assert params.frequency_penalty == pytest.approx(-0.25)
    assert params.logprobs == 4
    assert params.ignore_eos is True


def test_defaults() -> None:
    params = to_sampling_params(GenerationOptions(max_tokens=5), stream=False)
    assert params.n == 1
    assert params.max_tokens == 5
    assert params.temperature == 1.0
    assert params.top_p == 1.0
    assert not params.stop
    assert params.seed is None
    assert params.presence_penalty == 0.0
    assert params.frequency_penalty == 0.0
    assert params.logprobs is None
    assert params.ignore_eos is False


def test_zero_logprobs_is_not_none() -> None:
    """logprobs=0 asks for the chosen token's logprob only; None asks for none at all."""
    assert to_sampling_params(GenerationOptions(max_tokens=1, logprobs=0), stream=False).logprobs == 0


def test_greedy_temperature_zero() -> None:
    params = to_sampling_params(GenerationOptions(max_tokens=1, temperature=0.0), stream=False)
    assert params.temperature == 0.0


@pytest.mark.parametrize(
    ("stream", "kind"), [(True, RequestOutputKind.DELTA), (False, RequestOutputKind.FINAL_ONLY)]
)
def test_output_kind(stream: bool, kind: RequestOutputKind) -> None:
    assert to_sampling_params(FULL, stream=stream).output_kind == kind


def test_exact_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """What is handed to SamplingParams, before vLLM normalises it (e.g. stop None → [])."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(sampling, "SamplingParams", lambda **kw: calls.append(kw) or kw)

    to_sampling_params(FULL, stream=True)
    assert calls[-1] == {
        "n": 3,
        "max_tokens": 42,
        "temperature": 0.7,
        "top_p": 0.85,
        "stop": ["\n\n", "END"],
        "seed": 1234,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "logprobs": 4,
        "ignore_eos": True,
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "logit_bias": {17: -100.0, 3: 2.5},
        "skip_special_tokens": False,
        "structured_outputs": StructuredOutputsParams(json={"type": "object"}),
        "output_kind": RequestOutputKind.DELTA,
    }

    to_sampling_params(GenerationOptions(max_tokens=7), stream=False)
    assert calls[-1]["stop"] is None  # an empty stop tuple becomes None, not []
    assert calls[-1]["seed"] is None
    assert calls[-1]["logit_bias"] is None and calls[-1]["structured_outputs"] is None
    assert calls[-1]["top_k"] == 0  # vLLM's "off"
    assert calls[-1]["logprobs"] is None
    assert calls[-1]["output_kind"] is RequestOutputKind.FINAL_ONLY


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        (Structured("json_object", True, "response_format"), {"json_object": True}),
        (Structured("choice", ("yes", "no"), "guided_choice"), {"choice": ["yes", "no"]}),
        (Structured("regex", r"\d{3}", "guided_regex"), {"regex": r"\d{3}"}),
        (Structured("grammar", 'root ::= "a"', "guided_grammar"), {"grammar": 'root ::= "a"'}),
    ],
)
def test_constraints_reach_vllm(constraint: Structured, expected: dict[str, Any]) -> None:
    params = to_sampling_params(GenerationOptions(max_tokens=4, structured=constraint), stream=False)
    assert params.structured_outputs == StructuredOutputsParams(**expected)
