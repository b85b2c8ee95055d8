"""What the chat service is asked: the request as the protocol layer validated it (any
object with these attributes: the HTTP layer's pydantic models are), and who asks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from deepseekd.domain.identity import Identity
from deepseekd.engine.types import GenerationOptions
from deepseekd.services.chat.structured import Constrained
from deepseekd.services.chat.tools import Tooled, ToolPlan
from deepseekd.services.usage import QuotaState


class Sampling(Protocol):
    """OpenAI's sampling parameters, already type- and range-checked."""

    @property
    def model(self) -> str | None: ...
    @property
    def temperature(self) -> float: ...
    @property
    def top_p(self) -> float: ...
    @property
    def n(self) -> int: ...
    @property
    def stop(self) -> tuple[str, ...]: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def presence_penalty(self) -> float: ...
    @property
    def frequency_penalty(self) -> float: ...
    @property
    def max_tokens(self) -> int | None: ...
    @property
    def ignore_eos(self) -> bool: ...
    @property
    def logit_bias(self) -> Mapping[str, float] | None: ...
    @property
    def top_k(self) -> int: ...
    @property
    def min_p(self) -> float: ...
    @property
    def repetition_penalty(self) -> float: ...


class CallFunction(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def arguments(self) -> str: ...


class Call(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def function(self) -> CallFunction: ...


class Message(Protocol):
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> str: ...
    @property
    def tool_calls(self) -> Sequence[Call] | None: ...
    @property
    def tool_call_id(self) -> str | None: ...
    @property
    def prefix(self) -> bool: ...


class ChatRequest(Sampling, Constrained, Tooled, Protocol):
    @property
    def messages(self) -> Sequence[Message]: ...
    @property
    def conversation_id(self) -> str | None: ...
    @property
    def replace_from(self) -> str | None: ...
    @property
    def max_completion_tokens(self) -> int | None: ...
    @property
    def logprobs(self) -> bool: ...
    @property
    def top_logprobs(self) -> int | None: ...


class CompletionRequest(Sampling, Constrained, Protocol):
    @property
    def prompt(self) -> str: ...
    @property
    def logprobs(self) -> int | None: ...


@dataclass(frozen=True)
class DefaultSampling:
    """The sampling of the original design's ``POST /chat``: OpenAI's defaults."""

    model: str | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int | None = None
    ignore_eos: bool = False
    logit_bias: Mapping[str, float] | None = None
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0


@dataclass
class Caller:
    """Who asks, and what the closing audit event must name. ``quota`` is filled in once the
    request was counted (or refused), for the rate-limit headers of the answer."""

    identity: Identity
    request_id: str
    client: str | None
    arrival: float
    """time.monotonic() when the request arrived (for time-to-first-token)."""
    quota: QuotaState | None = None


@dataclass(frozen=True)
class Prepared:
    """A request ready for the engine."""

    model: str
    prompt_ids: list[int]
    options: GenerationOptions
    reasoning_parser: str | None = None
    """Set for chat requests to a reasoning model: the output is split into reasoning and answer."""
    tools: ToolPlan | None = None
    """Set when the request offers tools: its output may hold calls."""
    prefix: str | None = None
    """DeepSeek's prefix completion: the answer continues this text (not repeated)."""


def message_dict(m: Message) -> dict[str, Any]:
    """A validated message as the history keeps it (and clients send it back)."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.prefix:
        out["prefix"] = True
    return out
