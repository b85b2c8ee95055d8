"""The aiohttp application over the services: typed state, the middlewares, the route table
and the response headers. Starting and stopping the services is the daemon's
(``daemon.py``), which adds its cleanup contexts to the app this returns."""

from __future__ import annotations

from aiohttp import web

from deepseekd.http import openapi, routes
from deepseekd.http.middleware import MIDDLEWARES
from deepseekd.http.middleware.headers import add_headers
from deepseekd.http.state import MODEL_SHA256, NOTIFIER, TRACING, set_services
from deepseekd.obs.systemd import Notifier
from deepseekd.obs.tracing import Tracing
from deepseekd.services.container import Services


def create_app(
    svc: Services, *, notifier: Notifier, tracing: Tracing, model_sha256: str = ""
) -> web.Application:
    app = web.Application(
        middlewares=list(MIDDLEWARES), client_max_size=svc.settings.server.max_body_bytes
    )
    set_services(app, svc)
    app[NOTIFIER] = notifier
    app[TRACING] = tracing
    app[MODEL_SHA256] = model_sha256
    app.on_response_prepare.append(add_headers)
    routes.register(app)
    app.on_startup.append(openapi.build_on_startup)
    return app
