"""The acceptable-use notice: an admin sets it (``GET/PUT /admin/api/notice``), a user of
the chat page accepts it (``POST /auth/notice``); ``GET /auth/session`` says whether one is
pending for the caller."""

from __future__ import annotations

from aiohttp import web

from deepseekd.http.body import StrictBody, body_of
from deepseekd.http.state import IDENTITY, NOTICE


class NoticeBody(StrictBody):
    text: str
    """Plain text, up to 4000 characters; empty: no notice."""


class AcceptBody(StrictBody):
    version: int
    """The version the user read (``notice.version`` of ``GET /auth/session``)."""


async def get_notice(request: web.Request) -> web.Response:
    """The notice in force: text, version, when and by whom it was set, and how many users
    accepted it (version 0: never set)."""
    return web.json_response(await request.app[NOTICE].current())


async def put_notice(request: web.Request) -> web.Response:
    """Set the notice (plain text, up to 4000 characters; empty: none). A changed text is a
    new version that every user of the chat page accepts again; the same text changes
    nothing (``changed``: false)."""
    body = body_of(request, NoticeBody)
    return web.json_response(await request.app[NOTICE].publish(request[IDENTITY], body.text))


async def accept_notice(request: web.Request) -> web.Response:
    """Accept the notice in force; 409 ``notice_changed`` when ``version`` is not that one."""
    body = body_of(request, AcceptBody)
    return web.json_response(await request.app[NOTICE].accept(request[IDENTITY], body.version))
