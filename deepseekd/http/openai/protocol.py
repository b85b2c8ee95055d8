"""Request bodies of the OpenAI-compatible routes (and the original ``POST /chat``),
validated strictly: unknown fields are ignored (clients send extras), every known field is
checked for type and range. The chat service reads them through its own protocols
(``services/chat/request.py``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from deepseekd.http.body import Body

NAME = r"^[A-Za-z0-9_-]{1,64}$"
"""OpenAI's rule for function and schema names."""


class StreamOptions(Body):
    include_usage: bool = False


class ToolCallFunction(Body):
    name: str = Field(pattern=NAME)
    arguments: str = Field(max_length=1_000_000)
    """The arguments as JSON text, as the model produced them."""


class ToolCall(Body):
    """A call an assistant message made (sent back in the history)."""

    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: ToolCallFunction


class FunctionDefinition(Body):
    name: str = Field(pattern=NAME)
    description: str | None = Field(None, max_length=10_000)
    parameters: dict[str, Any] | None = None
    """A JSON Schema of the arguments (an object); none: no arguments."""
    strict: bool | None = None
    """Accepted: the arguments of a required or named call always follow the schema."""


class Tool(Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Body):
    name: str = Field(pattern=NAME)


class NamedToolChoice(Body):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(Body):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, populate_by_name=True)

    name: str = Field(pattern=NAME)
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    """Accepted: the schema is always enforced (guided decoding)."""


class ResponseFormat(Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and (
            self.json_schema is None or self.json_schema.json_schema is None
        ):
            raise ValueError('type "json_schema" needs json_schema.name and json_schema.schema')
        return self


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str = ""
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, max_length=128)
    """An assistant message's calls (sent back with the history)."""
    tool_call_id: str | None = Field(None, max_length=128)
    """A tool message: the call it answers."""
    prefix: bool = False
    """DeepSeek's chat prefix completion: the last (assistant) message is the beginning of
    the answer, which the model continues."""

    @model_validator(mode="after")
    def _roles(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError('a "tool" message needs the tool_call_id it answers')
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message carries tool_calls")
        if self.prefix and self.role != "assistant":
            raise ValueError("prefix: only an assistant message can be a prefix")
        return self

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


REFUSED: dict[str, str] = {
    "audio": "audio output is not supported (text only)",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not available: nothing leaves this server",
    "functions": 'the legacy "functions" are not supported; send "tools"',
    "function_call": 'the legacy "function_call" is not supported; send "tool_choice"',
    "reasoning_effort": "not supported: a reasoning model reasons as it was trained to",
    "verbosity": "not supported",
    "chat_template": "a custom chat template is not accepted; the model's own is used",
    "chat_template_kwargs": "not accepted; the model's own chat template is used as is",
    "best_of": "not supported; send n",
}
"""Fields that would change the answer and are not honoured: refused with a 400 naming
them, never ignored (README, Structured outputs and tools)."""


def refuse_fields(data: dict[str, Any], refused: dict[str, str], fine: dict[str, Any]) -> None:
    """Raise for the first field of ``refused`` that ``data`` sets: anything but absent,
    null, false, empty, or its value in ``fine`` (e.g. best_of 1)."""
    for name, why in refused.items():
        value = data.get(name)
        unset = value is None or value is False or (isinstance(value, (list, dict)) and not value)
        if unset or (name in fine and value == fine[name]):
            continue
        raise ValueError(f"{name}: {why}")


def _refuse_unsupported(data: Any) -> Any:
    if isinstance(data, dict):
        refuse_fields(data, REFUSED, {"best_of": 1})
        modalities = data.get("modalities")
        if modalities not in (None, ["text"]):
            raise ValueError('modalities: only ["text"] is supported')
    return data


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
    response_format: ResponseFormat | None = None
    logit_bias: dict[str, float] | None = None
    """Token id (as a string) → bias from -100 to 100 added to its logit."""
    top_k: int = Field(0, ge=-1)
    """vLLM's extension: sample among the k likeliest tokens (0 or -1: all)."""
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    guided_json: dict[str, Any] | None = None
    """vLLM's extension: a JSON Schema the answer follows (like response_format)."""
    guided_choice: list[str] | None = Field(None, min_length=1, max_length=256)
    """vLLM's extension: the answer is exactly one of these strings."""
    guided_regex: str | None = Field(None, min_length=1, max_length=10_000)
    """vLLM's extension: the answer matches this regular expression."""
    guided_grammar: str | None = Field(None, min_length=1, max_length=100_000)
    """vLLM's extension: the answer follows this EBNF (GBNF/Lark) grammar."""

    _check_stop = field_validator("stop", mode="before")(lambda cls, v: _stop(v))
    _refuse = model_validator(mode="before")(lambda cls, v: _refuse_unsupported(v))

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        if len(v) > 300:
            raise ValueError("at most 300 tokens")
        for token, bias in v.items():
            if not token.isascii() or not token.isdigit() or len(token) > 9:
                raise ValueError(f"{token[:20]!r}: keys are token ids (decimal strings)")
            if not -100 <= bias <= 100:
                raise ValueError(f"{token}: biases range from -100 to 100")
        return v

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage]
    conversation_id: str | None = Field(None, max_length=64)
    """deepseekd extension: append this turn to one of the caller's conversations."""
    replace_from: str | None = Field(None, max_length=64)
    """deepseekd extension (with conversation_id): the id of one of that conversation's
    turns; once the answer is stored, it replaces that turn and every later one."""
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    """Default: "auto" with tools, "none" without."""
    parallel_tool_calls: bool = True

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not v:
            raise ValueError("must hold at least one message")
        for i, m in enumerate(v[:-1]):
            if m.prefix:
                raise ValueError(f"{i}: prefix: only the last message can be a prefix")
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
    """``PATCH /v1/conversations/{id}``: rename a conversation, pin or unpin it (either or
    both)."""

    pinned: bool | None = None
    title: str | None = Field(None, min_length=1, max_length=120, validate_default=True)

    @field_validator("title")
    @classmethod
    def _something(cls, title: str | None, info: ValidationInfo) -> str | None:
        if title is None and info.data.get("pinned") is None:
            raise ValueError("give a title, pinned (true or false) or both")
        return title
