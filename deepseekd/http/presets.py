"""Shared system-prompt presets: every chat user lists them (``GET /v1/presets``); admins
manage them (``/admin/api/presets``). The work is services/presets.py's."""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from deepseekd.http.body import StrictBody, body_of
from deepseekd.http.state import IDENTITY, PRESETS


class PresetBody(StrictBody):
    text: str = Field(max_length=100_000)
    """The system prompt: plain text, up to 4000 characters (checked by the service, which
    names the limit)."""


async def list_presets(request: web.Request) -> web.Response:
    """The presets by name, each {"name", "text"}: what the chat page offers."""
    return web.json_response(await request.app[PRESETS].list())


async def admin_presets(request: web.Request) -> web.Response:
    """The presets by name with who changed each last and when, and the limits."""
    return web.json_response(await request.app[PRESETS].list(admin=True))


async def put_preset(request: web.Request) -> web.Response:
    """Create the preset named in the path or replace its text (``created``, ``changed``)."""
    body = body_of(request, PresetBody)
    name = request.match_info["name"]
    return web.json_response(await request.app[PRESETS].put(request[IDENTITY], name, body.text))


async def delete_preset(request: web.Request) -> web.Response:
    """Delete the preset named in the path (404 when there is none)."""
    name = request.match_info["name"]
    return web.json_response(await request.app[PRESETS].delete(request[IDENTITY], name))
