"""Small helpers shared by the access, admin and quota tests."""

from __future__ import annotations

import json
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

from deepseekd.security import totp

CHAT = "/v1/chat/completions"
CHAT_BODY = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 1}
LOGIN = "/admin/api/login"


def secret_of(totp_uri: str) -> str:
    """The base32 secret inside an ``otpauth://`` provisioning URI."""
    return parse_qs(urlparse(totp_uri).query)["secret"][0]


def code(secret: str, now: float) -> str:
    return totp.code_at(secret, now)


def wrong_code(secret: str, now: float) -> str:
    """Six digits that match none of the steps the server accepts around ``now``."""
    taken = {totp.code_at(secret, now + d) for d in (-30, 0, 30)}
    c = 0
    while f"{c:06d}" in taken:
        c += 1
    return f"{c:06d}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def error(resp: Any, status: int, code: Any = ..., param: Any = ...) -> dict[str, Any]:
    """The OpenAI error body of ``resp``, checked for status (and code/param when given)."""
    text = await resp.text()
    assert resp.status == status, f"{resp.method} {resp.url.path}: {resp.status} {text}"
    body = json.loads(text)
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "code", "param"}, err
    if code is not ...:
        assert err["code"] == code, err
    if param is not ...:
        assert err["param"] == param, err
    return err


async def ok_json(resp: Any, status: int = 200) -> Any:
    text = await resp.text()
    assert resp.status == status, f"{resp.method} {resp.url.path}: {resp.status} {text}"
    return json.loads(text)


async def login(client: Any, name: str, password: str, secret: str, clock: Callable[[], float],
                *, keep_cookie: bool = False) -> str:
    """Open an admin session; the cookie the client jar picked up is dropped unless asked."""
    resp = await client.post(LOGIN, json={"username": name, "password": password,
                                          "totp": code(secret, clock())})
    body = await ok_json(resp)
    if not keep_cookie:
        client.session.cookie_jar.clear()
    return str(body["token"])
