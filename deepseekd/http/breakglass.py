"""Break-glass routes: start, stop and use one (holders), and review them (auditors). The
rules live in services/breakglass.py; these handlers parse and answer."""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from deepseekd.domain.errors import AuthFailed
from deepseekd.http.body import StrictBody, body_of, whole_number
from deepseekd.http.errors import APIError, unauthorized
from deepseekd.http.state import BREAKGLASS, IDENTITY
from deepseekd.services.breakglass import REASON_CODES, SCOPES


class StartBody(StrictBody):
    scope: str = Field(description="read_history, lift_quota or admin.")
    target: str | None = Field(None, description="The user (read_history, lift_quota).")
    reason_code: str = Field(description="treatment, recovery, legal or other.")
    reason: str = Field(description="Why, in words (at most 500 characters).")
    minutes: int | None = Field(None, description="How long; default [breakglass] default.")
    totp: str | None = Field(None, description="A fresh code from the holder's authenticator.")


class ReviewBody(StrictBody):
    comment: str = Field(description="What the review found (at most 2000 characters).")


def _id(request: web.Request) -> int:
    return whole_number(request.match_info["id"], "id")


async def overview(request: web.Request) -> web.Response:
    """May the caller start one, the choices, and the caller's own sessions."""
    bg, who = request.app[BREAKGLASS], request[IDENTITY]
    return web.json_response(
        {
            "allowed": bg.may_start(who.name, who.groups),
            "scopes": list(SCOPES),
            "reason_codes": list(REASON_CODES),
            "default_minutes": bg.cfg.default_minutes,
            "max_minutes": bg.cfg.max_minutes,
            "sessions": await bg.mine(who),
        }
    )


async def start(request: web.Request) -> web.Response:
    """Begin emergency access: a reason, a scope, a duration and a fresh second factor."""
    body = body_of(request, StartBody)
    try:
        started = await request.app[BREAKGLASS].start(
            request[IDENTITY],
            scope=body.scope,
            target=body.target,
            reason_code=body.reason_code,
            reason=body.reason,
            minutes=body.minutes,
            totp=body.totp,
        )
    except AuthFailed as exc:  # the code, as on an X-TOTP call (a lock says until when)
        if exc.locked_until is not None:
            raise
        raise unauthorized(AuthFailed.PUBLIC_MESSAGE, "second_factor_failed") from None
    return web.json_response(started, status=201)


async def stop(request: web.Request) -> web.Response:
    return web.json_response(await request.app[BREAKGLASS].stop(request[IDENTITY], _id(request)))


async def conversations(request: web.Request) -> web.Response:
    """The target's conversations under a read_history break-glass (each read recorded)."""
    return web.json_response(
        await request.app[BREAKGLASS].read_list(request[IDENTITY], _id(request))
    )


async def conversation(request: web.Request) -> web.Response:
    got = await request.app[BREAKGLASS].read_one(
        request[IDENTITY], _id(request), request.match_info["conversation_id"]
    )
    return web.json_response(got)


async def reviews(request: web.Request) -> web.Response:
    """The auditor's queue: unreviewed (oldest first) or all (newest first), with events."""
    status = request.query.get("status", "unreviewed")
    if status not in ("unreviewed", "all"):
        raise APIError(400, "status: unreviewed or all", code="invalid_value", param="status")
    bg = request.app[BREAKGLASS]
    sessions = await bg.review_queue(unreviewed_only=status == "unreviewed")
    return web.json_response({"sessions": sessions, "review_hours": bg.cfg.review_hours})


async def review(request: web.Request) -> web.Response:
    body = body_of(request, ReviewBody)
    done = await request.app[BREAKGLASS].review(request[IDENTITY], _id(request), body.comment)
    return web.json_response(done)
