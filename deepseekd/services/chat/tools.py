"""Tool calling: ``tools``, ``tool_choice`` and ``parallel_tool_calls`` checked and turned
into what the engine runs, and the model's output turned into OpenAI tool calls.

* ``"none"``: the tools are left out of the prompt; the model answers in text.
* ``"auto"`` (the default with tools): the model decides; its calls are read out of the
  text by the model's tool parser (``[engine] tool_parser``). A model without one cannot
  call tools freely: a 400 says to use ``"required"`` or a named function.
* ``"required"`` and a named function: guided decoding makes the output a JSON list of
  calls (``[{"name": ..., "parameters": {...}}]``, at most one with
  ``parallel_tool_calls: false``), or the named function's arguments, validated against
  the function's ``parameters`` schema; so they hold even for a model never trained for
  tools. The answer's ``finish_reason`` is ``"tool_calls"``.

A chat template that does not render a ``tools`` list gets the functions described in the
system prompt instead, so the model knows what the arguments mean.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from deepseekd.config import ApiSettings
from deepseekd.domain.errors import Invalid
from deepseekd.engine.types import ChoiceDelta, Engine, GenerationStep, Splitter, ToolCallDelta
from deepseekd.services.chat.structured import check_schema

EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}


class FunctionSpec(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str | None: ...
    @property
    def parameters(self) -> dict[str, Any] | None: ...


class ToolSpec(Protocol):
    @property
    def function(self) -> FunctionSpec: ...


class NamedChoice(Protocol):
    @property
    def function(self) -> Any: ...


class Tooled(Protocol):
    @property
    def tools(self) -> Sequence[ToolSpec] | None: ...
    @property
    def tool_choice(self) -> str | NamedChoice | None: ...
    @property
    def parallel_tool_calls(self) -> bool: ...


@dataclass(frozen=True)
class ToolPlan:
    mode: str
    """"none", "auto", "required" or "named"."""
    tools: tuple[dict[str, Any], ...]
    """OpenAI function tools, for the chat template and the parser."""
    name: str | None = None
    """The named function."""
    parallel: bool = True

    @property
    def prompt_tools(self) -> tuple[dict[str, Any], ...]:
        return () if self.mode == "none" else self.tools

    def guided_schema(self) -> dict[str, Any] | None:
        """What guided decoding holds the output to (required and named), as vLLM does."""
        params = {t["function"]["name"]: t["function"].get("parameters") for t in self.tools}
        if self.mode == "named":
            assert self.name is not None
            return params[self.name] or EMPTY_OBJECT
        if self.mode != "required":
            return None
        schema: dict[str, Any] = {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "anyOf": [
                    {
                        "properties": {
                            "name": {"type": "string", "enum": [name]},
                            "parameters": p or EMPTY_OBJECT,
                        },
                        "required": ["name", "parameters"],
                    }
                    for name, p in params.items()
                ],
            },
        }
        if not self.parallel:
            schema["maxItems"] = 1
        return schema


def plan_tools(req: Tooled, engine: Engine, limits: ApiSettings) -> ToolPlan | None:
    """Check the request's tools and choice; None when it has neither."""
    tools = list(req.tools or [])
    choice = req.tool_choice
    if not tools:
        if choice in (None, "none"):
            return None
        raise Invalid("tool_choice: needs tools", field="tool_choice")
    dicts: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        f = tool.function
        if any(d["function"]["name"] == f.name for d in dicts):
            raise Invalid(f"tools.{i}.function.name: {f.name!r} is defined twice", field="tools")
        if f.parameters is not None:
            check_schema(f.parameters, f"tools.{i}.function.parameters", limits, object_only=True)
        fn: dict[str, Any] = {"name": f.name, "parameters": f.parameters or EMPTY_OBJECT}
        if f.description:
            fn["description"] = f.description
        dicts.append({"type": "function", "function": fn})
    if choice is None or isinstance(choice, str):
        mode = choice or "auto"
        if mode == "auto" and engine.tool_parser is None:
            raise Invalid(
                'tool_choice: "auto" needs a tool parser, and this model has none '
                '(engine.tool_parser); use "required" or name a function, which guided '
                "decoding enforces for any model",
                field="tool_choice",
            )
        return ToolPlan(mode, tuple(dicts), None, req.parallel_tool_calls)
    name = choice.function.name
    if name not in {d["function"]["name"] for d in dicts}:
        raise Invalid(
            f"tool_choice.function.name: {name!r} is not one of the tools",
            field="tool_choice",
        )
    return ToolPlan("named", tuple(dicts), name, req.parallel_tool_calls)


def describe_tools(tools: Sequence[dict[str, Any]]) -> str:
    """The functions, for a system prompt (chat templates that do not render tools)."""
    lines = [json.dumps(t["function"], ensure_ascii=False, separators=(",", ":")) for t in tools]
    return (
        "You can call these functions; each line is one, with a JSON Schema of its "
        "arguments:\n" + "\n".join(lines)
    )


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def template_messages(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]], knows_tools: bool
) -> list[dict[str, Any]]:
    """Messages as the chat template wants them: tool-call arguments as objects (templates
    render them with ``tojson``); for a template that knows no tools, the calls spelled out
    in the assistant's text and the functions described in the system prompt."""
    out: list[dict[str, Any]] = []
    for m in messages:
        m = dict(m)
        calls = m.pop("tool_calls", None)
        if calls and knows_tools:
            m["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {
                        "name": c["function"]["name"],
                        "arguments": _as_object(c["function"]["arguments"]),
                    },
                }
                for c in calls
            ]
        elif calls:
            spelled = "\n".join(
                f"[called {c['function']['name']}({c['function']['arguments']}) as {c['id']}]"
                for c in calls
            )
            m["content"] = f"{m.get('content') or ''}\n{spelled}".strip()
        if not knows_tools and m.get("role") == "tool":
            m["content"] = f"[result of {m.pop('tool_call_id', '?')}] {m.get('content', '')}"
        out.append(m)
    if tools and not knows_tools:
        text = describe_tools(tools)
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": f"{out[0].get('content', '')}\n\n{text}".strip()}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def _as_object(arguments: str) -> Any:
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return value if isinstance(value, dict) else arguments


# --------------------------------------------------------------------------- output


class GuidedCalls:
    """One choice's guided output (required / named) turned into tool-call deltas."""

    def __init__(self, plan: ToolPlan) -> None:
        self._plan = plan
        self._buf = ""
        self._id = call_id()
        self._named_started = False

    def split(self, d: ChoiceDelta) -> None:
        if self._plan.mode == "named":
            if d.text or not self._named_started:
                first = not self._named_started
                self._named_started = True
                d.tool_calls.append(
                    ToolCallDelta(
                        0, self._id if first else None, self._plan.name if first else None, d.text
                    )
                )
            d.text = ""
            return
        self._buf += d.text
        d.text = ""
        if d.finish_reason is None:
            return
        try:
            calls = json.loads(self._buf)
            if not isinstance(calls, list):
                raise ValueError("not a list")
            parsed = [
                (str(c["name"]), json.dumps(c["parameters"], ensure_ascii=False)) for c in calls
            ]
        except (ValueError, KeyError, TypeError):
            d.text = self._buf  # cut short (max_tokens): hand out what was made, as text
            return
        for i, (name, args) in enumerate(parsed):
            d.tool_calls.append(ToolCallDelta(i, call_id(), name, args))


class ToolSplits:
    """One tool-call splitter per choice of a request; splits each step's deltas in place
    (after the reasoning split) and marks a choice that called tools."""

    def __init__(self, plan: ToolPlan, engine: Engine, *, stream: bool) -> None:
        self._plan = plan
        self._engine = engine
        self._stream = stream
        self._splitters: dict[int, Splitter | None] = {}
        self._called: set[int] = set()

    def _splitter(self, index: int) -> Splitter | None:
        if index not in self._splitters:
            if self._plan.mode in ("required", "named"):
                self._splitters[index] = GuidedCalls(self._plan)
            elif self._plan.mode == "auto":
                self._splitters[index] = self._engine.tool_call_splitter(
                    self._plan.tools, stream=self._stream
                )
            else:
                self._splitters[index] = None
        return self._splitters[index]

    def __call__(self, step: GenerationStep) -> None:
        for d in step.choices:
            splitter = self._splitter(d.index)
            if splitter is None:
                continue
            splitter.split(d)
            if d.tool_calls:
                self._called.add(d.index)
            if d.finish_reason == "stop" and d.index in self._called:
                d.finish_reason = "tool_calls"
