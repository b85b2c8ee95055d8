"""The console's Users view (search, sort, pages, last sign-in, today's counts) and the
bulk import from CSV. Thin: the services check everything."""

from __future__ import annotations

import asyncio

from aiohttp import web

from deepseekd.http.errors import APIError, bad_request
from deepseekd.http.state import CLOCK, IDENTITY, SERVICES, SETTINGS
from deepseekd.services.user_import import MAX_BYTES
from deepseekd.services.users_view import parse_query

USERS_QUERY = (
    ("q", "string", "Search in names and groups (case-insensitive)."),
    ("sort", "string", "name (default), role, created_at, last_login or requests_today."),
    ("order", "string", "asc (default) or desc."),
    ("limit", "integer", "Users per page, 1 to 500; without limit and offset: every user."),
    ("offset", "integer", "Paging: how many matches to skip."),
)
IMPORT_QUERY = (
    ("dry_run", "string", "true (default): check and report only; false: create the users."),
)


async def list_users(request: web.Request) -> web.Response:
    query = parse_query(request.query)
    page = await request.app[SERVICES].users_view.page(query, request.app[CLOCK]())
    return web.json_response(page)


async def _csv_body(request: web.Request) -> bytes:
    if request.content_type not in ("text/csv", "text/plain"):
        raise APIError(
            415,
            f"Content-Type must be text/csv, got '{request.content_type or 'none'}'",
            code="unsupported_media_type",
        )
    if (request.content_length or 0) > MAX_BYTES:
        raise APIError(413, f"the file is over {MAX_BYTES // 1024} KiB", code="body_too_large")
    limit = request.app[SETTINGS].server.body_timeout_s
    try:
        async with asyncio.timeout(limit):
            raw = bytearray()
            while len(raw) <= MAX_BYTES and (chunk := await request.content.read(65536)):
                raw += chunk
    except TimeoutError:
        raise APIError(408, "the file did not arrive in time", code="body_timeout") from None
    if len(raw) > MAX_BYTES:
        raise APIError(413, f"the file is over {MAX_BYTES // 1024} KiB", code="body_too_large")
    return bytes(raw)


async def import_users(request: web.Request) -> web.Response:
    dry = request.query.get("dry_run", "true")
    if dry not in ("true", "false"):
        raise bad_request("dry_run: true or false", param="dry_run")
    raw = await _csv_body(request)
    report = await request.app[SERVICES].user_import.run(
        raw, dry_run=dry == "true", by=request[IDENTITY]
    )
    return web.json_response(report)
