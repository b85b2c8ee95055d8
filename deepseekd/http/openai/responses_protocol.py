"""The body of ``POST /v1/responses`` (OpenAI's Responses API, its stateless subset), and
its translation into a chat completion request: a Responses call runs the chat path, so
auth, quota, audit, history, tools and structured outputs are exactly those of chat.

This server keeps no response state: ``previous_response_id``, ``conversation``,
``store: true``, ``background: true``, stored ``prompt``s and ``include`` are refused with a
400 naming the field, as is every other field that would change the answer and is not
honoured (never ignored). ``input`` holds the whole conversation, as text or items: messages
(text only), the model's earlier ``function_call``s and their ``function_call_output``s.
Reasoning items sent back (a client appending ``response.output`` to its input) are
accepted and left out of the prompt, as chat leaves out ``reasoning_content``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from deepseekd.http.body import Body, validate
from deepseekd.http.errors import APIError
from deepseekd.http.openai.protocol import NAME, ChatCompletionRequest, refuse_fields

STATELESS = "this server is stateless and keeps no response state"

REFUSED: dict[str, str] = {
    "previous_response_id": f"{STATELESS}; send the whole conversation in input",
    "conversation": f"{STATELESS} or conversations of the Responses API; send the whole "
    "conversation in input (or conversation_id, to append to one of your chats)",
    "background": f"{STATELESS}; responses run in the foreground only",
    "prompt": f"{STATELESS}; stored prompt templates are not available, send input",
    "include": "no extra output (encrypted reasoning, logprobs, tool results) is available "
    f"here: {STATELESS}",
    "reasoning": "not supported: a reasoning model reasons as it was trained to",
    "max_tool_calls": "not supported",
    "top_logprobs": "not supported",
    "messages": 'not a Responses API field; send "input" (or use /v1/chat/completions)',
    "response_format": 'not a Responses API field; send "text.format"',
    "max_tokens": 'not a Responses API field; send "max_output_tokens"',
    "max_completion_tokens": 'not a Responses API field; send "max_output_tokens"',
    "stop": "not a Responses API field (use /v1/chat/completions)",
    "seed": "not a Responses API field (use /v1/chat/completions)",
    "logit_bias": "not a Responses API field (use /v1/chat/completions)",
}
"""Fields that would change the answer and are not honoured: refused with a 400 naming
them, never ignored. ``store`` (refused only when true), ``truncation`` (anything but
"disabled") and ``text.verbosity`` are checked alongside."""


def _refuse_unsupported(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    refuse_fields(data, REFUSED, {"top_logprobs": 0})
    if data.get("store") is True:
        raise ValueError(
            f"store: {STATELESS} to retrieve later; send store: false (or leave it out)"
        )
    if data.get("truncation") not in (None, "disabled"):
        raise ValueError(
            f'truncation: only "disabled": {STATELESS} to truncate; an input too long for '
            "the model's context is a 400"
        )
    text = data.get("text")
    if isinstance(text, dict) and text.get("verbosity") is not None:
        raise ValueError("text.verbosity: not supported")
    return data


def _first_error(exc: ValidationError) -> str:
    """A model's first validation error as ``where: what``."""
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = "is required" if err["type"] == "missing" else err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def _text(v: Any, what: str) -> Any:
    """A string, or a list of text parts joined (images, files and audio are refused)."""
    if not isinstance(v, list):
        return v
    texts: list[str] = []
    for i, part in enumerate(v):
        if (
            not isinstance(part, dict)
            or part.get("type") not in ("input_text", "output_text")
            or not isinstance(part.get("text"), str)
        ):
            kind = part.get("type") if isinstance(part, dict) else None
            raise ValueError(
                f"part {i}{f' ({kind!r})' if kind else ''}: only text parts "
                f'({{"type": "input_text", "text": ...}}) are supported in {what}'
            )
        texts.append(part["text"])
    return "".join(texts)


class TextPart(Body):
    type: Literal["input_text", "output_text"]
    text: str


class MessageItem(Body):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str

    _parts = field_validator("content", mode="before", json_schema_input_type=str | list[TextPart])(
        lambda cls, v: _text(v, "a message")
    )


class FunctionCallItem(Body):
    """A call the model made earlier (an item of an earlier response's output)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=128)
    name: str = Field(pattern=NAME)
    arguments: str = Field(max_length=1_000_000)


class FunctionCallOutputItem(Body):
    """The result of a call, for the model to go on with."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=128)
    output: str

    _parts = field_validator("output", mode="before", json_schema_input_type=str | list[TextPart])(
        lambda cls, v: _text(v, "a function_call_output")
    )


class ReasoningItem(Body):
    """An earlier response's reasoning, sent back: accepted, left out of the prompt."""

    type: Literal["reasoning"]


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem
ITEMS: dict[str, type[Body]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "reasoning": ReasoningItem,
}


def _item(i: int, raw: Any) -> Body:
    if not isinstance(raw, dict):
        raise ValueError(f"item {i}: must be an object")
    kind = raw.get("type", "message")
    model = ITEMS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ValueError(
            f"item {i}: items of type {kind!r} are not supported; send messages (text), "
            "function_call and function_call_output items"
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"item {i}: {_first_error(exc)}") from None


class FunctionTool(Body):
    """A function tool as the Responses API spells it (flat, not under "function")."""

    type: Literal["function"]
    name: str = Field(pattern=NAME)
    description: str | None = Field(None, max_length=10_000)
    parameters: dict[str, Any] | None = None
    """A JSON Schema of the arguments (an object); none: no arguments."""
    strict: bool | None = None
    """Accepted: the arguments of a required or named call always follow the schema."""


class FunctionChoice(Body):
    type: Literal["function"]
    name: str = Field(pattern=NAME)


class TextFormat(Body):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, pattern=NAME)
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    """Accepted: the schema is always enforced (guided decoding)."""

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.json_schema is None):
            raise ValueError('type "json_schema" needs name and schema')
        return self


class TextConfig(Body):
    format: TextFormat | None = None


class ResponsesRequest(Body):
    """``POST /v1/responses``: one stateless response, run as a chat completion."""

    model: str | None = None
    input: str | list[InputItem]
    instructions: str | None = None
    """A system message before the input."""
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    """Default: "auto" with tools."""
    parallel_tool_calls: bool | None = None
    user: str | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    """Echoed in the response; nothing is stored under it."""
    store: bool | None = None
    """Only false (or absent): this server keeps no response state."""
    truncation: Literal["disabled"] | None = None
    conversation_id: str | None = Field(None, max_length=64)
    """deepseekd extension: append this turn to one of the caller's conversations."""

    _refuse = model_validator(mode="before")(lambda cls, v: _refuse_unsupported(v))

    @field_validator("input", mode="wrap")
    @classmethod
    def _input(cls, v: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if isinstance(v, str):
            return handler(v)
        if not isinstance(v, list):
            raise ValueError("must be a string or a list of items")
        if not v:
            raise ValueError("must hold at least one item")
        return [_item(i, raw) for i, raw in enumerate(v)]

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools(cls, v: Any) -> Any:
        for i, tool in enumerate(v if isinstance(v, list) else []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise ValueError(
                    f"{i}: tools of type {kind!r} are not available: only function tools "
                    "(nothing leaves this server)"
                )
        return v

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _choice(cls, v: Any) -> Any:
        if isinstance(v, dict):
            if v.get("type") != "function":
                raise ValueError(
                    f"type {v.get('type')!r}: only a function can be named; or send "
                    '"auto", "none" or "required"'
                )
            try:
                return FunctionChoice.model_validate(v)
            except ValidationError as exc:
                raise ValueError(_first_error(exc)) from None
        if isinstance(v, str) and v not in ("none", "auto", "required"):
            raise ValueError('must be "auto", "none", "required" or {"type": "function", ...}')
        return v


# --------------------------------------------------------------------------- to chat


def _messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The chat messages ``input`` (and ``instructions``) stand for."""
    out: list[dict[str, Any]] = []
    if req.instructions:
        out.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        return [*out, {"role": "user", "content": req.input}]
    for item in req.input:
        if isinstance(item, MessageItem):
            out.append({"role": item.role, "content": item.content})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)  # one turn, several calls
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    return out


def _response_format(fmt: TextFormat | None) -> dict[str, Any] | None:
    if fmt is None or fmt.type != "json_schema":
        return None if fmt is None else {"type": fmt.type}
    spec: dict[str, Any] = {"name": fmt.name, "schema": fmt.json_schema}
    if fmt.description is not None:
        spec["description"] = fmt.description
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": spec}


def chat_body(req: ResponsesRequest) -> dict[str, Any]:
    """The chat completion request ``req`` stands for, as JSON."""
    body: dict[str, Any] = {"messages": _messages(req), "stream": req.stream}
    for name in ("model", "temperature", "top_p", "user", "conversation_id"):
        if getattr(req, name) is not None:
            body[name] = getattr(req, name)
    if req.max_output_tokens is not None:
        body["max_completion_tokens"] = req.max_output_tokens
    if req.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    fmt = _response_format(req.text.format if req.text else None)
    if fmt is not None:
        body["response_format"] = fmt
    if req.tools:
        body["tools"] = [
            {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
            for t in req.tools
        ]
    choice = req.tool_choice
    if isinstance(choice, FunctionChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None:
        body["tool_choice"] = choice
    return body


_PARAMS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^messages(\..*)?$"), "input"),
    (re.compile(r"^max_(completion_)?tokens$"), "max_output_tokens"),
    (re.compile(r"^response_format\.json_schema\.(schema|name)$"), r"text.format.\1"),
    (re.compile(r"^response_format(\..*)?$"), "text.format"),
    (re.compile(r"^tools\.(\d+)\.function\.(.+)$"), r"tools.\1.\2"),
    (re.compile(r"^tool_choice\.function\.(.+)$"), r"tool_choice.\1"),
)


def responses_param(param: str) -> str:
    """The Responses API's name for a chat request's field (``messages`` → ``input``)."""
    for pattern, repl in _PARAMS:
        if pattern.match(param):
            return pattern.sub(repl, param)
    return param


_LEADING_FIELD = re.compile(r"^([a-z_][a-z0-9_.]*): ")


def renamed(err: APIError) -> APIError:
    """``err`` (about the chat request) naming the Responses request's fields instead, in
    ``param`` and where its message begins with one."""
    if err.param:
        err.param = responses_param(err.param)
    err.message = _LEADING_FIELD.sub(lambda m: f"{responses_param(m.group(1))}: ", err.message)
    return err


def as_chat(req: ResponsesRequest) -> ChatCompletionRequest:
    """``req`` as a validated chat completion request; a 400 names the Responses field."""
    try:
        return validate(ChatCompletionRequest, chat_body(req))
    except APIError as exc:
        raise renamed(exc) from None
