"""The typed state the HTTP layer shares, in one place: the app's keys (the services, set
once by ``http/app.py``) and the per-request keys the middlewares fill in."""

from __future__ import annotations

from aiohttp import web

from deepseekd.config import Settings
from deepseekd.domain.identity import Identity
from deepseekd.obs.metrics import Metrics
from deepseekd.obs.systemd import Notifier
from deepseekd.obs.tracing import Tracing
from deepseekd.services.accounts import AccountService
from deepseekd.services.audit import AuditLog
from deepseekd.services.auth import AuthService
from deepseekd.services.breakglass import BreakGlassService
from deepseekd.services.chat import Caller, ChatService
from deepseekd.services.container import Clock, Services
from deepseekd.services.feedback import FeedbackService
from deepseekd.services.history import HistoryService
from deepseekd.services.keys import KeyService
from deepseekd.services.lifecycle import Lifecycle
from deepseekd.services.lora import LoraService
from deepseekd.services.notice import NoticeService
from deepseekd.services.presets import PresetService
from deepseekd.services.settings import RuntimeSettings
from deepseekd.services.sso import SsoService
from deepseekd.services.usage import QuotaService, QuotaState
from deepseekd.store.db import Database

# -- the app -------------------------------------------------------------------------

SERVICES = web.AppKey("services", Services)
SETTINGS = web.AppKey("settings", Settings)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
DATABASE = web.AppKey("database", Database)
KEYS = web.AppKey("keys", KeyService)
AUDIT = web.AppKey("audit", AuditLog)
ACCOUNTS = web.AppKey("accounts", AccountService)
AUTH = web.AppKey("auth", AuthService)
QUOTA = web.AppKey("quota", QuotaService)
HISTORY = web.AppKey("history", HistoryService)
LORA = web.AppKey("lora", LoraService)
RUNTIME = web.AppKey("runtime_settings", RuntimeSettings)
CHAT = web.AppKey("chat", ChatService)
SSO = web.AppKey("sso", SsoService)
BREAKGLASS = web.AppKey("breakglass", BreakGlassService)
NOTICE = web.AppKey("notice", NoticeService)
PRESETS = web.AppKey("presets", PresetService)
FEEDBACK = web.AppKey("feedback", FeedbackService)
METRICS = web.AppKey("metrics", Metrics)
NOTIFIER = web.AppKey("notifier", Notifier)
TRACING = web.AppKey("tracing", Tracing)
MODEL_SHA256 = web.AppKey("model_sha256", str)
ROUTES = web.AppKey("routes", dict)
"""(method, canonical path) → the route's entry in the route table (``http/routes.py``)."""
OPENAPI = web.AppKey("openapi_document", dict)


def set_services(app: web.Application, svc: Services) -> None:
    app[SERVICES] = svc
    app[SETTINGS] = svc.settings
    app[LIFECYCLE] = svc.life
    app[CLOCK] = svc.clock
    app[DATABASE] = svc.db
    app[KEYS] = svc.keys
    app[AUDIT] = svc.audit
    app[ACCOUNTS] = svc.accounts
    app[AUTH] = svc.auth
    app[QUOTA] = svc.usage
    app[HISTORY] = svc.history
    app[LORA] = svc.lora
    app[RUNTIME] = svc.runtime
    app[CHAT] = svc.chat
    app[SSO] = svc.sso
    app[BREAKGLASS] = svc.breakglass
    app[NOTICE] = svc.notice
    app[PRESETS] = svc.presets
    app[FEEDBACK] = svc.feedback
    app[METRICS] = svc.metrics


# -- one request ---------------------------------------------------------------------

REQUEST_ID = web.RequestKey("request_id", str)
REQUEST_START = web.RequestKey("request_start", float)
"""time.monotonic() when the request arrived."""
IDENTITY = web.RequestKey("identity", Identity)
QUOTA_STATE = web.RequestKey("quota_state", QuotaState)
SESSION_TOKEN = web.RequestKey("session_token", str)
"""The cookie that authenticated this request, if a cookie did."""
BODY = web.RequestKey("body", object)
"""The validated body, for routes whose table entry names a body model."""
CALLER = web.RequestKey("caller", Caller)
QUIET = web.RequestKey("quiet", bool)
"""Not logged line by line (a throttled sign-in: the flood is counted, not logged)."""


def caller(request: web.Request) -> Caller:
    """Who is calling, for the chat service (and the rate-limit headers of its answer)."""
    found = request.get(CALLER)
    if found is None:
        found = request[CALLER] = Caller(
            request[IDENTITY], request[REQUEST_ID], request.remote, request[REQUEST_START]
        )
    return found
