"""OpenAI sampling parameters → vLLM SamplingParams."""

from __future__ import annotations

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from deepseekd.engine.types import GenerationOptions


def to_sampling_params(options: GenerationOptions, *, stream: bool) -> SamplingParams:
    """Map validated options; streaming asks vLLM for deltas, otherwise the final output only."""
    return SamplingParams(
        n=options.n,
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        stop=list(options.stop) or None,
        seed=options.seed,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        logprobs=options.logprobs,
        ignore_eos=options.ignore_eos,
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
    )
