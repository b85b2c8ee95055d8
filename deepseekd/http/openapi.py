"""``GET /openapi.json``: the API as an OpenAPI 3.1 document, generated so it cannot drift.

The paths, who may call them, their bodies and how they answer come from the route table
(``routes.py``, found in the app's state); request bodies are the pydantic models the
handlers validate with; summaries the handlers' docstrings; limits that are settings (n,
max_tokens, messages) this daemon's settings. A test checks that every route is documented.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable
from typing import Any, Protocol

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from deepseekd import __version__
from deepseekd.config import Settings
from deepseekd.http.access import Access
from deepseekd.http.state import OPENAPI, ROUTES, SETTINGS
from deepseekd.services.settings import FIELDS, describe_field

PATH_ALIASES: dict[str, str] = {}
"""Prefix resources (none today): the table would name the prefix, the document a path."""


class RouteDoc(Protocol):
    """What the document reads of a route table entry (``routes.Route``)."""

    method: str
    path: str
    handler: Any
    access: Access
    body: type[BaseModel] | None
    body_optional: bool
    answers: str
    query: tuple[tuple[str, str, str], ...]


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code", "param"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
            },
        }
    },
}

SSE_EVENT = {
    "description": "One server-sent event (the schema describes each event, as OpenAPI 3.2's "
    "itemSchema does). Chat and completions: `data` is a JSON chunk in the shape of the "
    "non-streamed answer, and the last event's `data` is `[DONE]`. Responses: `event` names "
    "the typed event (`response.created` ... `response.completed`), `data` is its JSON, and "
    "there is no `[DONE]`.",
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}

SUCCESS: dict[str, dict[str, Any]] = {
    "json": {"application/json": {"schema": {"type": "object"}}},
    "created": {"application/json": {"schema": {"type": "object"}}},
    "stream": {
        "application/json": {"schema": {"type": "object"}},
        "text/event-stream": {"schema": SSE_EVENT},
    },
    "html": {"text/html": {"schema": {"type": "string"}}},
    "static": {
        "text/javascript": {"schema": {"type": "string"}},
        "text/css": {"schema": {"type": "string"}},
    },
    "text": {"text/plain": {"schema": {"type": "string"}}},
    "report": {
        "application/json": {"schema": {"type": "object"}},
        "text/csv": {"schema": {"type": "string"}},
    },
    "export": {
        "application/x-ndjson": {"schema": {"type": "string"}},
        "text/csv": {"schema": {"type": "string"}},
        "application/fhir+json": {"schema": {"type": "object"}},
    },
}


def _settings_patch_schema() -> dict[str, Any]:
    props: dict[str, Any] = {}
    for key, info in FIELDS.items():
        kind = describe_field(info)
        if kind["type"] == "int":
            props[key] = {
                "type": "integer",
                "minimum": kind["min"],
                "maximum": kind["max"],
                "description": info.doc,
            }
        else:
            props[key] = {"type": "string", "enum": kind["choices"], "description": info.doc}
    return {
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        "minProperties": 1,
    }


def _with_limits(schemas: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Limits that are settings of this daemon, so a client can see them before a 400."""
    api = settings.api
    out = copy.deepcopy(schemas)
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = out[name]["properties"]
        props["n"]["maximum"] = api.max_n
        for field in ("max_tokens", "max_completion_tokens"):
            if field in props:
                for alt in props[field].get("anyOf", [props[field]]):
                    if alt.get("type") == "integer":
                        alt["maximum"] = api.max_tokens_cap
    out["ChatCompletionRequest"]["properties"]["messages"]["maxItems"] = api.max_messages
    responses = out.get("ResponsesRequest", {}).get("properties", {})
    if "max_output_tokens" in responses:
        for alt in responses["max_output_tokens"].get("anyOf", [responses["max_output_tokens"]]):
            if alt.get("type") == "integer":
                alt["maximum"] = api.max_tokens_cap
    return out


def _summary(handler: Any) -> str | None:
    doc = inspect.getdoc(handler)
    return doc.split("\n\n")[0].replace("\n", " ") if doc else None


def _parameters(route: RouteDoc, path: str) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
        for part in path.split("/")
        if part.startswith("{") and part.endswith("}")
    ]
    for name, kind, doc in route.query:
        schema: dict[str, Any] = {"type": kind}
        if kind != "string":
            schema["minimum"] = 0
        if name == "limit":
            schema.update(minimum=1, maximum=1000 if route.path.startswith("/audit") else 200)
        params.append(
            {"name": name, "in": "query", "required": False, "description": doc, "schema": schema}
        )
    if route.access.second_factor:
        params.append(
            {
                "name": "X-TOTP",
                "in": "header",
                "required": False,
                "description": "The admin's current TOTP code, when the call is not "
                "made with an admin session.",
                "schema": {"type": "string"},
            }
        )
    return params


def _operation(route: RouteDoc, refs: dict[Any, Any]) -> dict[str, Any]:
    path = PATH_ALIASES.get(route.path, route.path)
    op: dict[str, Any] = {"operationId": f"{route.method.lower()} {route.path}"}
    summary = _summary(route.handler)
    if summary:
        op["summary"] = summary
    params = _parameters(route, path)
    if params:
        op["parameters"] = params
    body_schema: dict[str, Any] | None = None
    if route.body is not None:
        body_schema = refs[(route.body, "validation")]
    elif (route.method, route.path) == ("PATCH", "/admin/api/settings"):
        body_schema = {"$ref": "#/components/schemas/SettingsPatch"}
    if body_schema is not None:
        op["requestBody"] = {
            "required": not route.body_optional,
            "content": {"application/json": {"schema": body_schema}},
        }
    status = "201" if route.answers == "created" else "200"
    error = {
        "description": "An error, in OpenAI's shape.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if route.answers == "redirect":
        page = {"description": "A page saying why not.", "content": SUCCESS["html"]}
        op["responses"] = {
            "302": {"description": "On to the next page (Location)."},
            "401": page,
            "503": page,
            "default": error,
        }
    else:
        op["responses"] = {
            status: {"description": "Success.", "content": SUCCESS[route.answers]},
            "default": error,
        }
    if route.path in ("/healthz", "/readyz"):
        op["responses"]["503"] = {
            "description": "Not alive / not ready.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    rule = route.access
    if rule.roles:
        op["security"] = [{"bearer": []}, {"session": []}]
        op["description"] = (
            f"Roles: {', '.join(sorted(rule.roles))}."
            + (" Counts against the daily quota." if rule.quota else "")
            + (" Needs an admin session or X-TOTP." if rule.second_factor else "")
            + " A cookie session must send X-CSRF-Token on state changes."
        )
    else:
        op["security"] = []
    return op


def build_document(table: Iterable[RouteDoc], settings: Settings) -> dict[str, Any]:
    routes = sorted(table, key=lambda r: (r.method, r.path))
    models = sorted({r.body for r in routes if r.body is not None}, key=lambda m: m.__name__)
    refs, defs = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas = _with_limits(defs.get("$defs", {}), settings)
    schemas["Error"] = ERROR_SCHEMA
    schemas["SettingsPatch"] = _settings_patch_schema()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        doc_path = PATH_ALIASES.get(route.path, route.path)
        paths.setdefault(doc_path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "deepseekd",
            "version": __version__,
            "description": "A private, auditable OpenAI-compatible LLM service. Errors "
            'always have OpenAI\'s shape {"error": {...}}.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (dsk-...) or an admin session (dss-...).",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "deepseekd_session",
                    "description": "A browser session from POST /auth/login.",
                },
            },
        },
    }


async def build_on_startup(app: web.Application) -> None:
    """Built once at start-up, when every route is registered."""
    app[OPENAPI] = build_document(app[ROUTES].values(), app[SETTINGS])


async def openapi_json(request: web.Request) -> web.Response:
    """This API as an OpenAPI 3.1 document."""
    return web.json_response(request.app[OPENAPI])
