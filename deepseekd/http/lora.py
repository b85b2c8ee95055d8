"""Admin routes for LoRA adapters (``/admin/api/lora``); the work is services/lora.py's."""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from deepseekd.http.body import StrictBody, body_of
from deepseekd.http.state import IDENTITY, LORA


class LoadBody(StrictBody):
    name: str = Field(max_length=64)
    path: str = Field(max_length=4096)


async def list_adapters(request: web.Request) -> web.Response:
    service = request.app[LORA]
    service.require_enabled()
    return web.json_response({"adapters": await service.listing()})


async def load_adapter(request: web.Request) -> web.Response:
    body = body_of(request, LoadBody)
    rec = await request.app[LORA].load(body.name, body.path, request[IDENTITY])
    return web.json_response(rec.as_json(), status=201)


async def unload_adapter(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await request.app[LORA].unload(name, request[IDENTITY])
    return web.json_response({"name": name, "unloaded": True})
