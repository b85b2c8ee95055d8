"""Engine-neutral request and output types: the API layer speaks these, never vLLM's."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from deepseekd.domain.errors import Invalid, Unavailable


@dataclass(frozen=True)
class GenerationOptions:
    """OpenAI sampling parameters after validation (ranges and caps already checked)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    """Top alternatives to return per output token; None = no logprobs at all."""
    ignore_eos: bool = False
    adapter: str | None = None
    """A loaded LoRA adapter's name, or None for the base model."""


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class ChoiceDelta:
    """New output of one choice since the last delta (streaming) or in full (final)."""

    index: int
    text: str
    """The answer's new text (after a reasoning split: the answer part only)."""
    token_count: int
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    token_ids: Sequence[int] = ()
    reasoning: str = ""
    """New reasoning text, filled in by a ReasoningSplitter (see engine/reasoning.py)."""
    reasoning_tokens: int | None = None
    """Reasoning tokens of this choice so far (cumulative); None without a reasoning split."""


@dataclass
class GenerationStep:
    """One batch of deltas from the engine; ``finished`` is set on the last one."""

    choices: list[ChoiceDelta]
    prompt_tokens: int
    finished: bool


@dataclass
class EngineStats:
    """The scheduler's view, refreshed by the engine every step."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0


class EngineUnavailable(Unavailable):
    """The engine is loading, dead or shutting down: the request may be retried later."""


class EngineRejected(Invalid):
    """The engine refused the request as invalid (a 400 for the client)."""


class Splitter(Protocol):
    """Separates one choice's reasoning from its answer, delta by delta (engine/reasoning)."""

    def split(self, d: ChoiceDelta) -> None:
        """Split ``d`` in place: ``text`` keeps the answer, ``reasoning`` gets the rest."""


class Engine(Protocol):
    """What the HTTP layer needs from an engine (vLLM in production, a fake in unit tests)."""

    @property
    def model_name(self) -> str:
        """The name clients pass as ``model``."""

    @property
    def max_model_len(self) -> int:
        """Context window in tokens."""

    @property
    def device(self) -> str:
        """'cpu', 'cuda', ...: picks defaults such as the warmup count."""

    @property
    def dead(self) -> bool:
        """True once the engine cannot serve any more."""

    @property
    def reasoning_parser(self) -> str | None:
        """The reasoning parser in use (e.g. 'deepseek_r1'), or None for a plain model."""

    def reasoning_splitter(self) -> Splitter | None:
        """A fresh splitter for one choice's output, or None for a plain model."""

    async def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Apply the model's chat template and tokenize."""

    async def encode_text(self, prompt: str) -> list[int]:
        """Tokenize a raw completion prompt."""

    def generate(
        self, prompt_ids: list[int], options: GenerationOptions, request_id: str, *, stream: bool
    ) -> AsyncGenerator[GenerationStep, None]:
        """Run one request; closing the iterator early aborts it in the engine."""

    async def check_health(self) -> None:
        """Raise EngineUnavailable when the engine is dead."""

    def stats(self) -> EngineStats:
        """Requests running and waiting, KV-cache use."""

    async def add_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter folder under ``name``; EngineRejected if the engine cannot."""

    async def remove_adapter(self, name: str) -> None:
        """Unload an adapter; requests can no longer select it."""
