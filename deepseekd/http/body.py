"""Request bodies: read (within the size limit), parsed as JSON, validated strictly.

Unknown fields of the OpenAI bodies are ignored (clients send extras), those of the admin
bodies refused; every known field is checked for type and range, and the first problem is
reported with its dotted path.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from deepseekd.http.errors import APIError, bad_request
from deepseekd.http.state import BODY, SETTINGS

M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    """A request body: strict types, no NaN or infinity, extra fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, frozen=True)


class StrictBody(Body):
    """A body of the admin and login routes: an unknown field is an error, not a no-op."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_FIELD_FIRST = re.compile(r"^([a-z_][a-z0-9_.]*): (.+)$", re.S)


def _lone_surrogate(value: Any) -> bool:
    """A string anywhere in ``value`` holding half of a UTF-16 pair, which no store,
    tokenizer or log can encode. Iterative: a body nested as deep as the JSON parser allows
    must not overflow the stack here (it did: RecursionError, a 500)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_json(raw: bytes) -> dict[str, Any]:
    """Bytes → a JSON object, or a 400 that says what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("request body is not valid UTF-8", code="invalid_json") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise bad_request("request body is nested too deeply", code="invalid_json") from None
    except ValueError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("request body must be a JSON object", code="invalid_json")
    # JSON may escape half a surrogate pair ("\\ud800"); only then is the walk needed.
    if _ESCAPED_SURROGATE.search(raw) and _lone_surrogate(data):
        raise bad_request(
            "request body holds an unpaired UTF-16 surrogate escape", code="invalid_json"
        )
    return data


def validate(model: type[M], data: dict[str, Any]) -> M:
    """Validate ``data`` against ``model``; the first error becomes a 400 naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-")) or None
        msg = err["msg"].removeprefix("Value error, ")
        named = _FIELD_FIRST.match(msg) if param is None else None
        if named:  # a check of the whole body that names its field: "audio: not supported"
            param, msg = named.group(1), named.group(2)
        if err["type"] == "missing":
            msg = "is required"
        raise APIError(
            400, f"{param}: {msg}" if param else msg, code="invalid_value", param=param
        ) from None


async def read_json(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object: 415 for another content type, 413 past the size limit.
    ``optional``: no body at all reads as ``{}``."""
    if optional and request.content_length in (0, None) and not request.can_read_body:
        return {}
    if request.content_type != "application/json":
        raise APIError(
            415,
            f"Content-Type must be application/json, got '{request.content_type or 'none'}'",
            code="unsupported_media_type",
        )
    limit = request.app[SETTINGS].server.body_timeout_s
    try:
        async with asyncio.timeout(limit):
            raw = await request.read()  # aiohttp enforces client_max_size and raises 413
    except TimeoutError:
        raise APIError(
            408, f"the request body did not arrive within {limit:g} s", code="body_timeout"
        ) from None
    return parse_json(raw)


def body_of(request: web.Request, model: type[M]) -> M:
    """The body the route table validated for this request, as ``model``."""
    body = request[BODY]
    assert isinstance(body, model), f"the route table names no {model.__name__} body here"
    return body


def whole_number(raw: str, param: str, max_digits: int = 12) -> int:
    """A path or query parameter that must be a whole number, else 400 naming it. ASCII
    digits only: ``"²".isdigit()`` is true, and ``int("²")`` raises."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > max_digits:
        raise APIError(
            400, f"{param}: must be a positive integer", code="invalid_value", param=param
        )
    return int(raw)
