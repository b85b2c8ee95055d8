"""The caller's own conversations, data export and quota (``/v1/conversations``,
``/v1/me/export``, ``/v1/me/usage``). Another user's conversation id is a 404, exactly like
a missing one."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from deepseekd.http.body import body_of
from deepseekd.http.errors import bad_request
from deepseekd.http.openai.protocol import ConversationTitle
from deepseekd.http.state import HISTORY, IDENTITY, QUOTA

PAGE_DEFAULT, PAGE_MAX = 50, 200
SEARCH_DEFAULT, SEARCH_MAX = 20, 50


def _int_param(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise bad_request(f"{name}: an integer from {low} to {high}", param=name)
    return value


async def list_conversations(request: web.Request) -> web.Response:
    """Most recently updated first, ``limit`` (1-200, default 50) per page; the next page is
    ``?after=<id of the last one>`` while ``has_more`` is true."""
    limit = _int_param(request, "limit", default=PAGE_DEFAULT, low=1, high=PAGE_MAX)
    after = request.query.get("after") or None
    items = await request.app[HISTORY].list_conversations(request[IDENTITY], limit + 1, after)
    return web.json_response(
        {"object": "list", "data": items[:limit], "has_more": len(items) > limit}
    )


async def get_conversation(request: web.Request) -> web.Response:
    conv = await request.app[HISTORY].get_conversation(
        request[IDENTITY], request.match_info["conversation_id"]
    )
    return web.json_response(conv)


async def delete_conversation(request: web.Request) -> web.Response:
    cid = request.match_info["conversation_id"]
    await request.app[HISTORY].delete_conversation(request[IDENTITY], cid)
    return web.json_response({"id": cid, "deleted": True})


async def delete_all_conversations(request: web.Request) -> web.Response:
    """Delete all of the caller's conversations (``history.delete_all``, with the count);
    the account, its keys and today's usage stay."""
    deleted = await request.app[HISTORY].delete_all_conversations(request[IDENTITY])
    return web.json_response({"deleted": deleted})


async def rename_conversation(request: web.Request) -> web.Response:
    """Rename (``title``), pin or unpin (``pinned``) one of the caller's conversations."""
    cid = request.match_info["conversation_id"]
    body = body_of(request, ConversationTitle)
    history, who = request.app[HISTORY], request[IDENTITY]
    out: dict[str, Any] = {"id": cid}
    if body.title is not None:
        await history.rename_conversation(who, cid, body.title)
        out["title"] = body.title.strip()
    if body.pinned is not None:
        await history.pin_conversation(who, cid, body.pinned)
        out["pinned"] = body.pinned
    return web.json_response(out)


async def search_conversations(request: web.Request) -> web.Response:
    """The caller's own conversations whose title or messages contain ``q``, newest first,
    each with a snippet around the first match; ``?after=`` continues while ``has_more``.
    Not audited (searching one's own history is reading it)."""
    limit = _int_param(request, "limit", default=SEARCH_DEFAULT, low=1, high=SEARCH_MAX)
    after = request.query.get("after") or None
    page = await request.app[HISTORY].search(
        request[IDENTITY], request.query.get("q", ""), limit, after
    )
    return web.json_response(page.as_json(limit))


async def export_me(request: web.Request) -> web.Response:
    who = request[IDENTITY]
    data = await request.app[HISTORY].export_user(who.name, by=who)
    return web.json_response(
        data,
        headers={"Content-Disposition": f'attachment; filename="deepseekd-export-{who.name}.json"'},
    )


async def usage_me(request: web.Request) -> web.Response:
    """The caller's quota for today: requests and tokens used, and their limits.

    A null token limit (and remainder) means no token limit; ``reset_at`` (epoch seconds) is
    when the quota day turns over. Reading it counts nothing."""
    usage = await request.app[QUOTA].today(request[IDENTITY])
    return web.json_response(usage.as_json())
