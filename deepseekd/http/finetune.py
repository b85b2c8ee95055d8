"""Admin routes for fine-tuning (``/admin/api/finetune``): the jobs and their reports, and
the promotion and rollback of a trained adapter. The rules live in services/finetune/."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from pydantic import Field

from deepseekd.domain.errors import AuthFailed
from deepseekd.http.body import StrictBody, body_of
from deepseekd.http.errors import APIError, unauthorized
from deepseekd.http.state import IDENTITY, SERVICES


class PromoteBody(StrictBody):
    name: str = Field(max_length=64, description="The served name: <base>:<name>.")
    totp: str | None = Field(None, description="A fresh code from the admin's authenticator.")


class RollbackBody(StrictBody):
    version: int | None = Field(None, description="A kept version; default: the one before.")
    totp: str | None = Field(None, description="A fresh code from the admin's authenticator.")


def _job_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 12:
        raise APIError(400, "id: must be a positive integer", code="invalid_value", param="id")
    return int(raw)


async def _with_code(call: Awaitable[Any]) -> Any:
    """A wrong code answers as on an X-TOTP call (a lock says until when)."""
    try:
        return await call
    except AuthFailed as exc:
        if exc.locked_until is not None:
            raise
        raise unauthorized(AuthFailed.PUBLIC_MESSAGE, "second_factor_failed") from None


async def list_jobs(request: web.Request) -> web.Response:
    return web.json_response({"jobs": await request.app[SERVICES].finetune_jobs.listing()})


async def get_job(request: web.Request) -> web.Response:
    """One job with its report: eval loss and the regression answers before and after."""
    return web.json_response(await request.app[SERVICES].finetune_jobs.get(_job_id(request)))


async def list_releases(request: web.Request) -> web.Response:
    return web.json_response({"releases": await request.app[SERVICES].releases.listing()})


async def promote(request: web.Request) -> web.Response:
    body = body_of(request, PromoteBody)
    releases = request.app[SERVICES].releases
    done = await _with_code(
        releases.promote(request[IDENTITY], _job_id(request), body.name, body.totp, live=True)
    )
    return web.json_response(done, status=201)


async def rollback(request: web.Request) -> web.Response:
    body = body_of(request, RollbackBody)
    releases = request.app[SERVICES].releases
    done = await _with_code(
        releases.rollback(
            request[IDENTITY], request.match_info["name"], body.totp, to=body.version, live=True
        )
    )
    return web.json_response(done)
