"""What the chat service is asked: the request as the protocol layer validated it (any
object with these attributes: the HTTP layer's pydantic models are), and who asks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from deepseekd.domain.identity import Identity
from deepseekd.engine.types import GenerationOptions
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


class Message(Protocol):
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> str: ...


class ChatRequest(Sampling, Protocol):
    @property
    def messages(self) -> Sequence[Message]: ...
    @property
    def conversation_id(self) -> str | None: ...
    @property
    def max_completion_tokens(self) -> int | None: ...
    @property
    def logprobs(self) -> bool: ...
    @property
    def top_logprobs(self) -> int | None: ...


class CompletionRequest(Sampling, Protocol):
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
