"""Every failure leaves in OpenAI's error shape; unexpected ones are logged, not leaked."""

from __future__ import annotations

import logging

from aiohttp import web

from deepseekd.domain.errors import DomainError, StoreUnavailable
from deepseekd.http.errors import APIError, as_api_error
from deepseekd.http.middleware.types import Handler
from deepseekd.http.state import METRICS, REQUEST_ID, SETTINGS

log = logging.getLogger("deepseekd.http")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (APIError, DomainError) as exc:
        if isinstance(exc, StoreUnavailable):
            log.error(
                "database unavailable",
                extra={"request_id": request.get(REQUEST_ID), "error": exc.message},
            )
        err = as_api_error(exc)
        assert err is not None
        if err.status == 401:
            request.app[METRICS].auth_failures.inc()
            err.headers.setdefault("WWW-Authenticate", "Bearer")  # RFC 7235: name a scheme
        return err.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {
            404: f"no route {request.method} {request.path}",
            405: f"method {request.method} is not allowed on {request.path}",
            413: "request body too large: the limit is "
            f"{request.app[SETTINGS].server.max_body_bytes} bytes",
        }.get(exc.status, exc.reason)
        resp = APIError(exc.status, message, code=_HTTP_CODES.get(exc.status)).response()
        if exc.status == 405 and "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except ConnectionResetError:
        raise  # the client left; there is no one to answer
    except Exception:
        log.exception("internal error", extra={"request_id": request.get(REQUEST_ID)})
        return APIError(500, "internal server error", code="internal_error").response()
