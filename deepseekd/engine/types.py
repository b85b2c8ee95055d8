"""Engine-neutral request and output types: the API layer speaks these, never vLLM's."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from deepseekd.domain.errors import Invalid, Unavailable


@dataclass(frozen=True)
class Structured:
    """A constraint on the output, enforced by the engine's guided decoding."""

    kind: str
    """"json_schema", "json_object", "choice", "regex" or "grammar"."""
    value: Any = None
    """The JSON schema (a dict), the choices (a tuple of strings), the regex or the grammar."""
    param: str = "response_format"
    """The request field it came from: errors name it."""


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
    structured: Structured | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs added to the logits, as OpenAI's ``logit_bias``."""
    top_k: int = 0
    """0: off (vLLM's top_k, an extension)."""
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    cache_salt: str | None = None
    """Separates the prefix cache: requests share cached blocks only with the same salt
    (one per user, so no user learns another's prompt from cache hits)."""
    skip_special_tokens: bool = True
    """False when a tool parser reads markers that are special tokens."""


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
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    """New tool-call output, filled in by a tool-call splitter (services/chat/tools.py)."""


@dataclass
class ToolCallDelta:
    """New output of one tool call of a choice: the first delta of a call carries its id and
    name, later ones more of its arguments (JSON text)."""

    index: int
    """Which call of the choice (0, 1, ... in the order the model made them)."""
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class GenerationStep:
    """One batch of deltas from the engine; ``finished`` is set on the last one."""

    choices: list[ChoiceDelta]
    prompt_tokens: int
    finished: bool
    cached_tokens: int | None = None
    """Prompt tokens found in the prefix cache (None: the engine does not say)."""


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
    def vocab_size(self) -> int:
        """Token ids run from 0 to this minus one (logit_bias is checked against it)."""

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

    async def encode_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        continue_final: bool = False,
    ) -> list[int]:
        """Apply the model's chat template and tokenize. ``tools``: OpenAI function tools
        for the template; ``continue_final``: the last (assistant) message is a prefix the
        answer continues, instead of a new turn."""

    @property
    def chat_template_knows_tools(self) -> bool:
        """Whether the chat template renders a ``tools`` list (else the caller describes
        the tools in the system prompt)."""

    @property
    def tool_parser(self) -> str | None:
        """The tool-call parser in use (e.g. 'hermes'), or None: no calls are read from
        free text (tool_choice "auto" is refused)."""

    @property
    def tool_parser_keeps_special_tokens(self) -> bool:
        """The tool parser reads markers that are special tokens: keep them in the text."""

    def tool_call_splitter(
        self, tools: Sequence[dict[str, Any]], *, stream: bool
    ) -> Splitter | None:
        """A fresh splitter that moves one choice's tool calls out of its text (``auto``)."""

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
