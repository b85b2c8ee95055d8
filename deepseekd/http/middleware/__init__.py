"""The middlewares, outermost first: request id (and its log line, metric and span), the
error shape, the drain gate, authentication and authorization. Security and rate-limit
headers are added to every response as it is prepared (``headers.py``)."""

from deepseekd.http.middleware.auth import auth_middleware
from deepseekd.http.middleware.drain import drain_middleware
from deepseekd.http.middleware.errors import error_middleware
from deepseekd.http.middleware.request_id import request_id_middleware

MIDDLEWARES = (request_id_middleware, error_middleware, drain_middleware, auth_middleware)

__all__ = ["MIDDLEWARES"]
