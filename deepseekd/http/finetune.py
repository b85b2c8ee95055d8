"""Admin routes for fine-tuning (``/admin/api/finetune``): datasets (upload, list, delete),
the jobs and their reports, and the promotion and rollback of a trained adapter. The rules
live in services/finetune/."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from pydantic import Field

from deepseekd.domain.errors import AuthFailed
from deepseekd.http.body import StrictBody, body_of, whole_number
from deepseekd.http.errors import unauthorized
from deepseekd.http.state import IDENTITY, SERVICES


class DatasetBody(StrictBody):
    name: str = Field(max_length=64, description="The dataset's name (versions accumulate).")
    examples: str = Field(
        description='JSONL: one {"messages": [...]} or {"prompt", "completion"} per line.'
    )
    prompts: str = Field("", description="Regression prompts, one per line (at most 100).")


class PromoteBody(StrictBody):
    name: str = Field(max_length=64, description="The served name: <base>:<name>.")
    totp: str | None = Field(None, description="A fresh code from the admin's authenticator.")


class RollbackBody(StrictBody):
    version: int | None = Field(None, description="A kept version; default: the one before.")
    totp: str | None = Field(None, description="A fresh code from the admin's authenticator.")


def _job_id(request: web.Request) -> int:
    return whole_number(request.match_info["id"], "id")


async def _with_code(call: Awaitable[Any]) -> Any:
    """A wrong code answers as on an X-TOTP call (a lock says until when)."""
    try:
        return await call
    except AuthFailed as exc:
        if exc.locked_until is not None:
            raise
        raise unauthorized(AuthFailed.PUBLIC_MESSAGE, "second_factor_failed") from None


async def list_datasets(request: web.Request) -> web.Response:
    return web.json_response({"datasets": await request.app[SERVICES].datasets.listing()})


async def import_dataset(request: web.Request) -> web.Response:
    """The console's upload (up to [server] max_body_bytes; larger files with the CLI)."""
    body = body_of(request, DatasetBody)
    datasets = request.app[SERVICES].datasets
    count = datasets.served_model_counter()
    done = await datasets.import_(
        request[IDENTITY], body.name, body.examples.encode(), body.prompts, count
    )
    return web.json_response(done, status=201)


async def delete_dataset(request: web.Request) -> web.Response:
    """Every version of a dataset, with their keys (?version=N: that one only)."""
    raw = request.query.get("version")
    version = whole_number(raw, "version", 9) if raw is not None else None
    datasets = request.app[SERVICES].datasets
    done = await datasets.delete(request[IDENTITY], request.match_info["name"], version)
    return web.json_response(done)


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
