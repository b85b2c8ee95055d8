"""``GET /openapi.json``: the API as an OpenAPI 3.1 document, generated so it cannot drift.

The paths and who may call them come from the route table (api/access.py); request bodies
from the same pydantic models the handlers validate with; summaries from the handlers'
docstrings; limits that are settings (n, max_tokens, messages) from this daemon's settings.
A test checks that every route in the table and the router is documented.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from deepseekd import __version__
from deepseekd.api import access
from deepseekd.api.admin import LimitsBody, LoginBody, NewKeyBody, NewUserBody
from deepseekd.api.runtime_settings import SPECS
from deepseekd.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ConversationTitle,
    SimpleChatRequest,
)
from deepseekd.api.web import WebLogin
from deepseekd.config import Settings
from deepseekd.keys import SETTINGS

routes = web.RouteTableDef()

BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("POST", "/v1/chat/completions"): ChatCompletionRequest,
    ("POST", "/v1/completions"): CompletionRequest,
    ("POST", "/chat"): SimpleChatRequest,
    ("PATCH", "/v1/conversations/{conversation_id}"): ConversationTitle,
    ("POST", "/auth/login"): WebLogin,
    ("POST", "/admin/api/login"): LoginBody,
    ("POST", "/admin/api/users"): NewUserBody,
    ("PATCH", "/admin/api/users/{name}"): LimitsBody,
    ("POST", "/admin/api/users/{name}/keys"): NewKeyBody,
}
"""Routes whose JSON body a pydantic model validates. PATCH /admin/api/settings is built
from the runtime settings' specs below."""

OPTIONAL_BODY = frozenset({("POST", "/admin/api/users/{name}/keys")})
CREATED = frozenset({("POST", "/admin/api/users"), ("POST", "/admin/api/users/{name}/keys")})
STREAMS = frozenset({("POST", "/v1/chat/completions"), ("POST", "/v1/completions")})
HTML = frozenset({"/", "/admin"})

PATH_ALIASES: dict[str, str] = {}
"""Prefix resources (none today): the table would name the prefix, the document a path."""

AUDIT_QUERY = [
    ("since", "number", "Events at or after this time (epoch seconds)."),
    ("until", "number", "Events before this time (epoch seconds)."),
    ("actor", "string", "Only events by this user name."),
    ("action", "string", "Only events with this action, e.g. user.create."),
    ("after_id", "integer", "Paging: events after this id (next_after_id of the last page)."),
    ("limit", "integer", "Events per page, 1 to 1000."),
]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "code", "param"],
        "additionalProperties": False,
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "code": {"type": ["string", "null"]},
            "param": {"type": ["string", "null"]},
        },
    }},
}


SSE_EVENT = {
    "description": "One server-sent event (the schema describes each event, as OpenAPI 3.2's "
                   "itemSchema does): `data` is a JSON chunk in the shape of the non-streamed "
                   "answer, and the last event's `data` is `[DONE]`.",
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                   "id": {"type": "string"}, "retry": {"type": "integer"}},
}


def _settings_patch_schema() -> dict[str, Any]:
    props: dict[str, Any] = {}
    for s in SPECS:
        if s.type == "int":
            props[s.key] = {"type": "integer", "minimum": s.min, "maximum": s.max,
                            "description": s.description}
        else:
            props[s.key] = {"type": "string", "enum": list(s.choices),
                            "description": s.description}
    return {"type": "object", "properties": props, "additionalProperties": False,
            "minProperties": 1}


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
    return out


def _summary(handler: Any) -> str | None:
    doc = inspect.getdoc(handler)
    return doc.split("\n\n")[0].replace("\n", " ") if doc else None


def _handlers(app: web.Application) -> dict[tuple[str, str], Any]:
    out = {}
    for route in app.router.routes():
        resource = route.resource
        if resource is not None and route.method != "HEAD":
            out[(route.method, resource.canonical)] = route.handler
    return out


def _operation(method: str, path: str, rule: access.Access, refs: dict[Any, Any],
               handler: Any) -> dict[str, Any]:
    key = (method, path)
    op: dict[str, Any] = {"operationId": f"{method.lower()} {path}"}
    summary = _summary(handler) if handler is not None else None
    if summary:
        op["summary"] = summary
    params: list[dict[str, Any]] = []
    doc_path = PATH_ALIASES.get(path, path)
    for part in doc_path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            params.append({"name": part[1:-1], "in": "path", "required": True,
                           "schema": {"type": "string"}})
    if path == "/audit/api/events":
        params += [{"name": n, "in": "query", "required": False, "description": d,
                    "schema": {"type": t, "minimum": 0, **({"maximum": 1000, "minimum": 1}
                                                            if n == "limit" else {})}}
                   if t != "string" else
                   {"name": n, "in": "query", "required": False, "description": d,
                    "schema": {"type": "string"}}
                   for n, t, d in AUDIT_QUERY]
    if path == "/v1/conversations" and method == "GET":
        params += [
            {"name": "limit", "in": "query", "required": False,
             "description": "Conversations per page, 1 to 200 (default 50).",
             "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
            {"name": "after", "in": "query", "required": False,
             "description": "Paging: the id of the last conversation of the previous page.",
             "schema": {"type": "string"}}]
    if rule.second_factor:
        params.append({"name": "X-TOTP", "in": "header", "required": False,
                       "description": "The admin's current TOTP code, when the call is not "
                       "made with an admin session.", "schema": {"type": "string"}})
    if params:
        op["parameters"] = params

    body_schema: dict[str, Any] | None = None
    if key in BODIES:
        body_schema = refs[(BODIES[key], "validation")]
    elif key == ("PATCH", "/admin/api/settings"):
        body_schema = {"$ref": "#/components/schemas/SettingsPatch"}
    if body_schema is not None:
        op["requestBody"] = {"required": key not in OPTIONAL_BODY,
                             "content": {"application/json": {"schema": body_schema}}}

    ok: dict[str, Any]
    if path in HTML:
        ok = {"text/html": {"schema": {"type": "string"}}}
    elif path == "/static/{filename}":
        ok = {"text/javascript": {"schema": {"type": "string"}},
              "text/css": {"schema": {"type": "string"}}}
    elif path == "/metrics":
        ok = {"text/plain": {"schema": {"type": "string"}}}
    else:
        ok = {"application/json": {"schema": {"type": "object"}}}
        if key in STREAMS:
            ok["text/event-stream"] = {"schema": SSE_EVENT}
    status = "201" if key in CREATED else "200"
    op["responses"] = {
        status: {"description": "Success.", "content": ok},
        "default": {"description": "An error, in OpenAI's shape.",
                    "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/Error"}}}},
    }
    if path in ("/healthz", "/readyz"):
        op["responses"]["503"] = {"description": "Not alive / not ready.",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}
    if rule.roles:
        op["security"] = [{"bearer": []}, {"session": []}]
        op["description"] = (f"Roles: {', '.join(sorted(rule.roles))}."
                             + (" Counts against the daily quota." if rule.quota else "")
                             + (" Needs an admin session or X-TOTP." if rule.second_factor else "")
                             + " A cookie session must send X-CSRF-Token on state changes.")
    else:
        op["security"] = []
    return op


def build_document(app: web.Application) -> dict[str, Any]:
    settings = app[SETTINGS]
    models = sorted(set(BODIES.values()), key=lambda m: m.__name__)
    refs, defs = models_json_schema([(m, "validation") for m in models],
                                    ref_template="#/components/schemas/{model}")
    schemas = _with_limits(defs.get("$defs", {}), settings)
    schemas["Error"] = ERROR_SCHEMA
    schemas["SettingsPatch"] = _settings_patch_schema()
    handlers = _handlers(app)
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), rule in sorted(access.ROUTES.items()):
        doc_path = PATH_ALIASES.get(path, path)
        paths.setdefault(doc_path, {})[method.lower()] = _operation(
            method, path, rule, refs, handlers.get((method, path)))
    return {
        "openapi": "3.1.0",
        "info": {"title": "deepseekd", "version": __version__,
                 "description": "A private, auditable OpenAI-compatible LLM service. Errors "
                                "always have OpenAI's shape {\"error\": {...}}."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An API key (dsk-...) or an admin session (dss-...)."},
                "session": {"type": "apiKey", "in": "cookie", "name": "deepseekd_session",
                            "description": "A browser session from POST /auth/login."},
            },
        },
    }


DOCUMENT = web.AppKey("openapi_document", dict)


async def _build_on_startup(app: web.Application) -> None:
    app[DOCUMENT] = build_document(app)


def setup(app: web.Application) -> None:
    """Serve the document; it is built once at start-up, when every route is registered."""
    app.add_routes(routes)
    app.on_startup.append(_build_on_startup)


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    """This API as an OpenAPI 3.1 document."""
    return web.json_response(request.app[DOCUMENT])
