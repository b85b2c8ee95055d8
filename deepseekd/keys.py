"""Every aiohttp AppKey in one place: the typed state the rooms share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from aiohttp import web

from deepseekd.config import Settings
from deepseekd.lifecycle import Lifecycle

if TYPE_CHECKING:
    from deepseekd.api.inference import InferenceService
    from deepseekd.api.lora import LoraService
    from deepseekd.api.runtime_settings import RuntimeSettings
    from deepseekd.obs.metrics import Metrics
    from deepseekd.obs.systemd import Notifier
    from deepseekd.obs.tracing import Tracing
    from deepseekd.store.accounts import AccountService
    from deepseekd.store.audit import AuditLog
    from deepseekd.store.history import HistoryService
    from deepseekd.store.keys import KeyService
    from deepseekd.store.db import Database
    from deepseekd.store.quota import QuotaService

SETTINGS = web.AppKey("settings", Settings)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
CLOCK = web.AppKey("clock", Callable[[], float])
INFERENCE = web.AppKey("inference", "InferenceService")
DATABASE = web.AppKey("database", "Database")
ACCOUNTS = web.AppKey("accounts", "AccountService")
QUOTA = web.AppKey("quota", "QuotaService")
AUDIT = web.AppKey("audit", "AuditLog")
HISTORY = web.AppKey("history", "HistoryService")
KEYS = web.AppKey("keys", "KeyService")
METRICS = web.AppKey("metrics", "Metrics")
NOTIFIER = web.AppKey("notifier", "Notifier")
TRACING = web.AppKey("tracing", "Tracing")
RUNTIME = web.AppKey("runtime_settings", "RuntimeSettings")
MODEL_SHA256 = web.AppKey("model_sha256", str)
LORA = web.AppKey("lora", "LoraService")
