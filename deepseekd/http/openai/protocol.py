"""Request bodies of the OpenAI-compatible routes (and the original ``POST /chat``),
validated strictly: unknown fields are ignored (clients send extras), every known field is
checked for type and range. The chat service reads them through its own protocols
(``services/chat/request.py``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from deepseekd.http.body import Body


class StreamOptions(Body):
    include_usage: bool = False


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str = ""
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_content(cls, v: Any) -> str:
        """Accept a string, null, or a list of text parts (images are not supported)."""
        if v is None:
            return ""
        if isinstance(v, str):
            return v
        if isinstance(v, list):
            texts: list[str] = []
            for i, part in enumerate(v):
                if (
                    not isinstance(part, dict)
                    or part.get("type") != "text"
                    or not isinstance(part.get("text"), str)
                ):
                    raise ValueError(
                        f'part {i} must be {{"type": "text", "text": string}}; '
                        "only text content is supported"
                    )
                texts.append(part["text"])
            return "".join(texts)
        raise ValueError("must be a string or a list of text parts")


def _stop(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,) if v else ()
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        if len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return tuple(s for s in v if s)
    raise ValueError("must be a string or a list of up to 4 strings")


class Sampling(Body):
    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: tuple[str, ...] = ()
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False
    """vLLM's extension: keep generating past the end-of-sequence token up to max_tokens
    (fixed-length answers for benchmarks)."""

    _check_stop = field_validator("stop", mode="before")(lambda cls, v: _stop(v))

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage]
    conversation_id: str | None = Field(None, max_length=64)
    """deepseekd extension: append this turn to one of the caller's conversations."""
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not v:
            raise ValueError("must hold at least one message")
        return v


class CompletionRequest(Sampling):
    prompt: str
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, v: Any) -> Any:
        if isinstance(v, list):
            if len(v) == 1 and isinstance(v[0], str):
                return v[0]
            raise ValueError(
                "must be a string (or a list of exactly one string); send one request per prompt"
            )
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("not supported")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("not supported (no fill-in-the-middle)")
        return v


class SimpleChatRequest(Body):
    """The original design's ``POST /chat {"prompt": ...}``."""

    prompt: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    conversation_id: str | None = Field(None, max_length=64)


class ConversationTitle(Body):
    """``PATCH /v1/conversations/{id}``: rename a conversation."""

    title: str = Field(min_length=1, max_length=120)
