"""GET /openapi.json: an OpenAPI 3.1 document of every route, built from the route table and
the handlers' own request models, so the document and the code cannot drift apart."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs

from deepseekd.http.routes import ACCESS as ROUTES
from deepseekd.http.openapi import PATH_ALIASES
from deepseekd.http.routes import BODIES

from tests.api.helpers import ok_json

Daemon = Any


async def _document(daemon: Daemon) -> dict[str, Any]:
    resp = await daemon.client.get("/openapi.json")  # public: no credentials
    return await ok_json(resp)


async def test_every_route_in_the_table_and_router_is_documented(daemon: Daemon) -> None:
    doc = await _document(daemon)
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    table = {(m, PATH_ALIASES.get(p, p)) for m, p in ROUTES}
    router = {(r.method, PATH_ALIASES.get(r.resource.canonical, r.resource.canonical))
              for r in daemon.app.router.routes() if r.method != "HEAD"}
    assert documented == table
    assert router <= documented
    for (method, path), rule in ROUTES.items():
        op = doc["paths"][PATH_ALIASES.get(path, path)][method.lower()]
        assert op["security"] == ([] if not rule.roles else [{"bearer": []}, {"session": []}])
        assert "default" in op["responses"]


async def test_request_bodies_are_the_handlers_models(daemon: Daemon) -> None:
    """The schema of each body is what the handler validates with: a body the schema
    accepts, pydantic accepts, and one it refuses, pydantic refuses."""
    doc = await _document(daemon)
    components = doc["components"]["schemas"]
    for (method, path), model in BODIES.items():
        body = doc["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]
        name = body["schema"]["$ref"].rsplit("/", 1)[1]
        assert name == model.__name__
        schema = {**components[name], "components": {"schemas": components}}
        validator = jsonschema_rs.validator_for(schema)
        assert not validator.is_valid({"max_tokens": "many", "messages": 5, "name": 1,
                                       "username": 5, "title": 5, "label": 5,
                                       "prompt": 5, "daily_request_limit": "x"})


async def test_limits_that_are_settings_are_in_the_document(make_daemon: Any) -> None:
    d = await make_daemon(env={"DEEPSEEKD_API__MAX_N": "3", "DEEPSEEKD_API__MAX_MESSAGES": "7"})
    schemas = (await _document(d))["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert chat["n"]["maximum"] == 3 and chat["messages"]["maxItems"] == 7
    cap = d.settings.api.max_tokens_cap
    out = schemas["ResponsesRequest"]["properties"]["max_output_tokens"]
    assert {"type": "integer", "minimum": 1, "maximum": cap}.items() <= next(
        a for a in out.get("anyOf", [out]) if a.get("type") == "integer").items()


async def test_rename_validates_the_title(daemon: Daemon) -> None:
    await daemon.post_json("/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    listed = await ok_json(await daemon.client.get("/v1/conversations", headers=daemon.auth))
    cid = listed["data"][0]["id"]
    for bad in ({}, {"title": 5}, {"title": ""}, {"title": "x" * 121}):
        r = await daemon.client.patch(f"/v1/conversations/{cid}", json=bad, headers=daemon.auth)
        assert r.status == 400, (bad, await r.text())
        assert (await r.json())["error"]["param"] == "title"
    r = await daemon.client.patch(f"/v1/conversations/{cid}", json={"title": " Plans "},
                                  headers=daemon.auth)
    assert (await ok_json(r)) == {"id": cid, "title": "Plans"}


def _sse_events(text: str) -> list[dict[str, str]]:
    """Server-sent events as the spec parses them: fields per event, events split by a
    blank line (what a client, and schemathesis, hand to the per-event schema)."""
    events = []
    for block in text.strip().split("\n\n"):
        event: dict[str, str] = {}
        for line in block.splitlines():
            field, _, value = line.partition(":")
            event[field] = value[1:] if value.startswith(" ") else value
        events.append(event)
    return events


async def test_streamed_answers_match_the_documented_event_schema(daemon: Daemon) -> None:
    doc = await _document(daemon)
    for path, body in (("/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
                       ("/v1/completions", {"prompt": "hi", "max_tokens": 3})):
        content = doc["paths"][path]["post"]["responses"]["200"]["content"]
        validator = jsonschema_rs.validator_for(content["text/event-stream"]["schema"])
        resp = await daemon.client.post(path, json={**body, "stream": True}, headers=daemon.auth)
        events = _sse_events(await resp.text())
        assert resp.content_type == "text/event-stream" and len(events) >= 3
        for event in events:
            assert validator.is_valid(event), (path, event)
        assert events[-1]["data"] == "[DONE]"
        assert all(isinstance(json.loads(e["data"]), dict) for e in events[:-1])


async def test_api_parity_fields_and_routes_are_documented(daemon: Daemon) -> None:
    doc = await _document(daemon)
    schemas = doc["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    for field in ("response_format", "tools", "tool_choice", "parallel_tool_calls", "logit_bias",
                  "top_k", "min_p", "repetition_penalty", "guided_json", "guided_choice",
                  "guided_regex", "guided_grammar"):
        assert field in chat, field
    message = schemas["ChatMessage"]["properties"]
    assert {"tool_calls", "tool_call_id", "prefix"} <= set(message)
    assert "tool" in json.dumps(message["role"])
    assert "response_format" in schemas["CompletionRequest"]["properties"]
    assert "post" in doc["paths"]["/v1/responses"]
    assert "get" in doc["paths"]["/v1/me/usage"]
    responses = doc["paths"]["/v1/responses"]["post"]
    assert "text/event-stream" in json.dumps(responses["responses"])
