"""Admin API (``/admin/api/...``): sessions, users, keys, key rotation, status, settings.
Every call but login needs a fresh second factor, which the auth middleware checks;
handlers take the body the route table validated, call a service, render."""

from __future__ import annotations

import io
from dataclasses import asdict
from typing import Any

import segno
from aiohttp import web
from pydantic import Field

from deepseekd import __version__
from deepseekd.domain.audit import Event
from deepseekd.http import sso
from deepseekd.http.body import StrictBody, body_of, read_json, validate, whole_number
from deepseekd.http.errors import APIError, bad_request
from deepseekd.http.middleware.auth import ADMIN_COOKIE
from deepseekd.http.session_cookies import admin_session_answer
from deepseekd.http.state import (
    ACCOUNTS,
    AUDIT,
    AUTH,
    BREAKGLASS,
    IDENTITY,
    KEYS,
    LIFECYCLE,
    METRICS,
    MODEL_SHA256,
    QUOTA,
    RUNTIME,
    SERVICES,
    SESSION_TOKEN,
    SETTINGS,
)
from deepseekd.security.apikeys import csrf_token


class LoginBody(StrictBody):
    username: str = Field(min_length=1, max_length=64)
    password: str | None = Field(None, max_length=256)
    api_key: str | None = Field(None, max_length=256)
    totp: str = Field(min_length=1, max_length=16)


class NewUserBody(StrictBody):
    name: str
    role: str
    daily_request_limit: int | None = None
    daily_token_limit: int | None = None


class LimitsBody(StrictBody):
    daily_request_limit: int | None = None
    daily_token_limit: int | None = None


class NewKeyBody(StrictBody):
    label: str = ""


def qr_svg(uri: str) -> str:
    """The enrolment QR code as SVG markup, made here: the secret never leaves the box."""
    buf = io.BytesIO()
    # A standalone SVG (with its xmlns): browsers draw it only so inside <img src="data:...">.
    segno.make(uri, error="m").save(
        buf, kind="svg", xmldecl=False, scale=5, dark="#000", light="#fff"
    )
    return buf.getvalue().decode()


# -- sessions ------------------------------------------------------------------------


async def login(request: web.Request) -> web.Response:
    """Open an admin session: password (or API key) plus the current TOTP code."""
    body = body_of(request, LoginBody)
    if bool(body.password) == bool(body.api_key):
        raise APIError(
            400,
            "send exactly one of password or api_key, plus totp",
            code="invalid_value",
            param="password",
        )
    token, who = await request.app[AUTH].login(
        body.username,
        password=body.password,
        api_key=body.api_key,
        code=body.totp,
        source=request.remote,
    )
    return admin_session_answer(request, token, who)


async def logout(request: web.Request) -> web.Response:
    # The token that authenticated this call, not whichever else the client also sent.
    auth = request.headers.get("Authorization")
    token = auth.partition(" ")[2].strip() if auth else request.cookies.get(ADMIN_COOKIE, "")
    if request[IDENTITY].via == "session" and token:
        await request.app[AUTH].logout(token, request[IDENTITY])
    provider = await sso.end_session_url(request, token or None)
    resp = web.json_response(
        {"logged_out": True, **({"end_session_url": provider} if provider else {})}
    )
    resp.del_cookie(ADMIN_COOKIE, path="/admin")
    return resp


async def admin_session(request: web.Request) -> web.Response:
    """For a reloaded console: who is logged in and the session's CSRF token."""
    who = request[IDENTITY]
    token = request.get(SESSION_TOKEN) or request.headers.get("Authorization", "").partition(" ")[2]
    return web.json_response(
        {
            "user": who.name,
            "role": who.role,
            "csrf_token": csrf_token(token.strip()) if who.via == "session" else None,
            "idle_timeout_s": request.app[SETTINGS].auth.session_idle_minutes * 60,
        }
    )


# -- users and keys ------------------------------------------------------------------


async def create_user(request: web.Request) -> web.Response:
    body = body_of(request, NewUserBody)
    new = await request.app[ACCOUNTS].create_user(
        body.name,
        body.role,
        daily_request_limit=body.daily_request_limit,
        daily_token_limit=body.daily_token_limit,
        by=request[IDENTITY],
    )
    out = new.as_json()
    if new.totp_uri:
        out["totp_qr_svg"] = qr_svg(new.totp_uri)
    return web.json_response(out, status=201)


async def set_limits(request: web.Request) -> web.Response:
    raw = await read_json(request)
    body = validate(LimitsBody, raw)
    changes = {k: getattr(body, k) for k in raw}  # only the fields sent
    if not changes:
        raise APIError(
            400, "send daily_request_limit and/or daily_token_limit", code="invalid_value"
        )
    user = await request.app[ACCOUNTS].set_limits(
        request.match_info["name"], **changes, by=request[IDENTITY]
    )
    return web.json_response(asdict(user))


async def disable_user(request: web.Request) -> web.Response:
    await request.app[ACCOUNTS].disable_user(request.match_info["name"], by=request[IDENTITY])
    return web.json_response({"name": request.match_info["name"], "disabled": True})


async def enable_user(request: web.Request) -> web.Response:
    """Enable a disabled user again (not an erased one)."""
    await request.app[ACCOUNTS].enable_user(request.match_info["name"], by=request[IDENTITY])
    return web.json_response({"name": request.match_info["name"], "disabled": False})


async def unlock_user(request: web.Request) -> web.Response:
    """Lift the sign-in locks on a name (every address, every path)."""
    lifted = await request.app[ACCOUNTS].unlock(request.match_info["name"], by=request[IDENTITY])
    return web.json_response({"name": request.match_info["name"], "locks_lifted": lifted})


async def reset_password(request: web.Request) -> web.Response:
    """A one-time password, shown once; the user must choose a new one at the next sign-in.
    Their sessions end."""
    password = await request.app[ACCOUNTS].reset_password(
        request.match_info["name"], by=request[IDENTITY]
    )
    return web.json_response(
        {"name": request.match_info["name"], "password": password, "must_change_password": True}
    )


async def reset_totp(request: web.Request) -> web.Response:
    uri = await request.app[ACCOUNTS].reset_totp(request.match_info["name"], by=request[IDENTITY])
    return web.json_response(
        {"name": request.match_info["name"], "totp_uri": uri, "totp_qr_svg": qr_svg(uri)}
    )


async def list_keys(request: web.Request) -> web.Response:
    keys = await request.app[ACCOUNTS].list_keys(request.match_info["name"])
    return web.json_response({"keys": [asdict(k) for k in keys]})


async def create_key(request: web.Request) -> web.Response:
    body = body_of(request, NewKeyBody)
    key_id, key = await request.app[ACCOUNTS].create_key(
        request.match_info["name"], body.label, by=request[IDENTITY]
    )
    return web.json_response({"id": key_id, "api_key": key}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    key_id = whole_number(request.match_info["key_id"], "key_id")
    await request.app[ACCOUNTS].revoke_key(key_id, by=request[IDENTITY])
    return web.json_response({"id": key_id, "revoked": True})


async def erase_user(request: web.Request) -> web.Response:
    """GDPR Art. 17: crypto-shred the user's history, then delete it; the account is disabled."""
    result = await request.app[SERVICES].erasure.erase(
        request.match_info["name"], by=request[IDENTITY]
    )
    return web.json_response(result)


async def export_user(request: web.Request) -> web.Response:
    """GDPR Art. 15 on behalf of a data subject."""
    data = await request.app[BREAKGLASS].export_user(request[IDENTITY], request.match_info["name"])
    return web.json_response(data)


async def rotate_keys(request: web.Request) -> web.Response:
    """A new master key version; every data key re-wrapped."""
    retired, current = await request.app[KEYS].rotate(request[IDENTITY])
    return web.json_response({"retired": retired, "current": current})


# -- usage per department ------------------------------------------------------------


def wants_csv(request: web.Request) -> bool:
    """``?format=csv`` (or ``json``); without one, an ``Accept: text/csv`` header."""
    fmt = request.query.get("format", "")
    if fmt not in ("", "json", "csv"):
        raise bad_request("format: json or csv", param="format")
    return fmt == "csv" or (not fmt and "text/csv" in request.headers.get("Accept", ""))


def report_answer(report: Any, as_csv: bool) -> web.Response:
    """A report (``as_json``, ``as_csv``, ``filename``) as JSON, or as a CSV download."""
    if not as_csv:
        return web.json_response(report.as_json())
    return web.Response(
        text=report.as_csv(),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{report.filename}"'},
    )


async def usage_report(request: web.Request) -> web.Response:
    """Requests and tokens per directory group and day, as JSON or CSV.

    Days ``from``..``to`` inclusive (YYYY-MM-DD, by default the last 30 ending today, at
    most 366); ``group`` (case-insensitive) for one group only. Users count in each group
    they are in now; users in no group under "(no group)"."""
    as_csv = wants_csv(request)
    q = request.query
    report = await request.app[QUOTA].department_usage(q.get("from"), q.get("to"), q.get("group"))
    extra = {"from": report.first, "to": report.last, "group": report.group}
    await request.app[AUDIT].append(
        Event.by(request[IDENTITY], "usage.report", extra={**extra, "csv": as_csv})
    )
    return report_answer(report, as_csv)


async def usage_summary(request: web.Request) -> web.Response:
    """The console's usage charts: requests, tokens, failures and refusals per quota day and
    the top users, for the days and group ``usage_report`` takes (JSON only)."""
    q = request.query
    summary = await request.app[QUOTA].summary(q.get("from"), q.get("to"), q.get("group"))
    extra = {"from": summary.first, "to": summary.last, "group": summary.group, "summary": True}
    await request.app[AUDIT].append(Event.by(request[IDENTITY], "usage.report", extra=extra))
    return web.json_response(summary.as_json())


# -- the box -------------------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    app = request.app
    life = app[LIFECYCLE]
    metrics = app[METRICS]
    engine = life.engine
    stats = engine.stats() if engine is not None else None
    return web.json_response(
        {
            "version": __version__,
            "model": life.model_name,
            "model_sha256": app[MODEL_SHA256],
            "phase": life.phase.value,
            "warmup": f"{life.warmup_done}/{life.warmup_total}" if life.warmup_total else None,
            "requests_running": stats.running if stats else 0,
            "requests_waiting": stats.waiting if stats else 0,
            "kv_cache_usage": stats.kv_cache_usage if stats else 0.0,
            "tokens_per_second": round(metrics.token_rate(), 2),
            "gpus": metrics.gpu.snapshot(),
            "master_key": (await app[KEYS].status(app[SETTINGS].keys.rotation_days)).as_json(),
            "replicas": [asdict(r) for r in await app[KEYS].replicas()],
        }
    )


async def get_settings(request: web.Request) -> web.Response:
    return web.json_response({"settings": request.app[RUNTIME].describe()})


async def patch_settings(request: web.Request) -> web.Response:
    changes = await read_json(request)
    await request.app[RUNTIME].update(changes, request[IDENTITY])
    return web.json_response({"settings": request.app[RUNTIME].describe()})
