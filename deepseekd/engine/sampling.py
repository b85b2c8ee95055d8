"""OpenAI sampling parameters → vLLM SamplingParams."""

from __future__ import annotations

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from deepseekd.engine.types import GenerationOptions, Structured


def structured_params(s: Structured) -> StructuredOutputsParams:
    if s.kind == "json_schema":
        return StructuredOutputsParams(json=s.value)
    if s.kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if s.kind == "choice":
        return StructuredOutputsParams(choice=list(s.value))
    if s.kind == "regex":
        return StructuredOutputsParams(regex=s.value)
    if s.kind == "grammar":
        return StructuredOutputsParams(grammar=s.value)
    raise ValueError(f"unknown output constraint {s.kind!r}")


def to_sampling_params(options: GenerationOptions, *, stream: bool) -> SamplingParams:
    """Map validated options; streaming asks vLLM for deltas, otherwise the final output only."""
    return SamplingParams(
        n=options.n,
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k if options.top_k > 0 else 0,
        min_p=options.min_p,
        repetition_penalty=options.repetition_penalty,
        stop=list(options.stop) or None,
        seed=options.seed,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        logprobs=options.logprobs,
        logit_bias=dict(options.logit_bias) or None,
        ignore_eos=options.ignore_eos,
        skip_special_tokens=options.skip_special_tokens,
        structured_outputs=structured_params(options.structured) if options.structured else None,
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
    )
