"""One error type and one JSON shape for every failure: OpenAI's ``{"error": {...}}``.

Domain errors (``domain/errors.py``) become HTTP errors here and nowhere else
(``from_domain``); the error middleware renders whatever reaches it.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from deepseekd.domain.errors import (
    AuthFailed,
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    Unavailable,
)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}

_STATUS: tuple[tuple[type[DomainError], int], ...] = (
    (Invalid, 400),
    (AuthFailed, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (RateLimited, 429),
    (Unavailable, 503),
)

MAX_MESSAGE_CHARS = 1000
"""Messages may quote the client's input (a model name, an id): never echo a huge one back."""


class APIError(Exception):
    """An error the client should see; rendered by the error middleware."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return _TYPES.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
            }
        }

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)


def from_domain(exc: DomainError) -> APIError:
    """The HTTP error a domain error stands for."""
    if isinstance(exc, AuthFailed):
        return _refused(exc)
    status = next((s for kind, s in _STATUS if isinstance(exc, kind)), 400)
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return APIError(status, exc.message, code=exc.code, param=exc.field, headers=headers)


def as_api_error(exc: BaseException) -> APIError | None:
    """``exc`` as an APIError when it is one the client should see, else None."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, DomainError):
        return from_domain(exc)
    return None


def _refused(exc: AuthFailed) -> APIError:
    """A refused sign-in: 401 that never says why, or 429 saying when to come back once the
    name is locked from this address (the same words whether the name exists or not)."""
    if exc.locked_until is not None:
        wait = max(1, int(exc.locked_until - time.time()) + 1)
        return APIError(
            429, exc.message, code="too_many_attempts", headers={"Retry-After": str(wait)}
        )
    return APIError(401, exc.message, code=exc.code, headers={"WWW-Authenticate": "Bearer"})


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, code=code, param=param)


def unauthorized(message: str, code: str) -> APIError:
    return APIError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})
