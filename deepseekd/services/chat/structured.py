"""Structured outputs: ``response_format`` (json_object, json_schema) and vLLM's ``guided_*``
extras, checked here and enforced by the engine's guided decoding.

A schema must be a valid JSON Schema (its own meta-schema says so), at most
``api.max_schema_bytes`` of compact JSON and ``api.max_schema_depth`` levels deep; every
refusal is a 400 naming the field. With a reasoning model the constraint applies to the
answer, not to the reasoning (the engine is told the reasoning parser).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Protocol

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from deepseekd.config import ApiSettings
from deepseekd.domain.errors import Invalid
from deepseekd.engine.types import Structured


class JsonSchemaSpec(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def json_schema(self) -> dict[str, Any] | None: ...


class ResponseFormatSpec(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def json_schema(self) -> JsonSchemaSpec | None: ...


class Constrained(Protocol):
    """The fields of a request that constrain its output."""

    @property
    def response_format(self) -> ResponseFormatSpec | None: ...
    @property
    def guided_json(self) -> dict[str, Any] | None: ...
    @property
    def guided_choice(self) -> Sequence[str] | None: ...
    @property
    def guided_regex(self) -> str | None: ...
    @property
    def guided_grammar(self) -> str | None: ...


def _depth(value: Any) -> int:
    """Nesting depth of dicts and lists, iteratively (a deep schema must not overflow)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item)
    return deepest


def check_schema(
    schema: Any, param: str, limits: ApiSettings, *, object_only: bool = False
) -> None:
    """Refuse a schema that is too big, too deep, or not a JSON Schema at all."""
    if not isinstance(schema, dict):
        raise Invalid(f"{param}: a JSON Schema must be an object", field=param)
    size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limits.max_schema_bytes:
        raise Invalid(
            f"{param}: the schema is {size} bytes; at most {limits.max_schema_bytes} on this "
            "server",
            field=param,
        )
    depth = _depth(schema)
    if depth > limits.max_schema_depth:
        raise Invalid(
            f"{param}: the schema nests {depth} levels; at most {limits.max_schema_depth} on "
            "this server",
            field=param,
        )
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise Invalid(
            f"{param}: not a valid JSON Schema{f' at {where}' if where else ''}: "
            f"{exc.message[:300]}",
            field=param,
        ) from None
    if object_only and schema.get("type", "object") != "object":
        raise Invalid(f"{param}: the arguments' schema must be of type object", field=param)


def structured(req: Constrained, limits: ApiSettings) -> Structured | None:
    """The one output constraint ``req`` asks for, if any."""
    found: list[Structured] = []
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        found.append(Structured("json_object", None, "response_format"))
    elif fmt is not None and fmt.type == "json_schema":
        spec = fmt.json_schema
        assert spec is not None and spec.json_schema is not None  # the protocol checked
        param = "response_format.json_schema.schema"
        check_schema(spec.json_schema, param, limits)
        found.append(Structured("json_schema", spec.json_schema, param))
    if req.guided_json is not None:
        check_schema(req.guided_json, "guided_json", limits)
        found.append(Structured("json_schema", req.guided_json, "guided_json"))
    if req.guided_choice is not None:
        choices = tuple(req.guided_choice)
        if any(not c for c in choices):
            raise Invalid("guided_choice: the choices must not be empty", field="guided_choice")
        found.append(Structured("choice", choices, "guided_choice"))
    if req.guided_regex is not None:
        try:
            re.compile(req.guided_regex)
        except re.error as exc:
            raise Invalid(
                f"guided_regex: not a regular expression: {exc}", field="guided_regex"
            ) from None
        found.append(Structured("regex", req.guided_regex, "guided_regex"))
    if req.guided_grammar is not None:
        found.append(Structured("grammar", req.guided_grammar, "guided_grammar"))
    if len(found) > 1:
        names = ", ".join(s.param.split(".")[0] for s in found)
        raise Invalid(
            f"{found[1].param.split('.')[0]}: one output constraint per request; got {names}",
            field=found[1].param.split(".")[0],
        )
    return found[0] if found else None
