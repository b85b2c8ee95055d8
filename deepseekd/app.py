"""build_app wires the rooms; run_daemon owns start-up, readiness, drain and exit code."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import signal
import socket
import time
from typing import AsyncContextManager, AsyncIterator, Callable

from aiohttp import web

from deepseekd import __version__
from deepseekd.api import admin, backpressure, health, history, lora, metrics, openai, openapi
from deepseekd.api import audit as audit_api
from deepseekd.api import web as web_pages
from deepseekd.api.runtime_settings import RuntimeSettings
from deepseekd.api.inference import InferenceService
from deepseekd.api.middlewares import (
    add_request_id,
    auth_middleware,
    error_middleware,
    lifecycle_middleware,
    request_id_middleware,
)
from deepseekd.config import Settings
from deepseekd.engine.types import Engine, EngineUnavailable, GenerationOptions
from deepseekd.keys import (
    ACCOUNTS,
    AUDIT,
    CLOCK,
    DATABASE,
    HISTORY,
    INFERENCE,
    KEYS,
    LIFECYCLE,
    LORA,
    METRICS,
    MODEL_SHA256,
    NOTIFIER,
    QUOTA,
    RUNTIME,
    SETTINGS,
    TRACING,
)
from deepseekd.lifecycle import Lifecycle, Phase
from deepseekd.obs.metrics import Metrics, bind_gauges
from deepseekd.obs.systemd import Notifier
from deepseekd.obs.tracing import Tracing
from deepseekd.security.keyring import Keyring, SecretBox
from deepseekd.security.tls import TlsError, TlsReloader
from deepseekd.store.accounts import AccountService
from deepseekd.store.adapters import AdapterRegistry
from deepseekd.store.audit import AuditLog, AuditUnavailable, Event
from deepseekd.store.history import HistoryService
from deepseekd.store.keys import KeyService
from deepseekd.store.settings import SettingsStore
from deepseekd.store.db import Database
from deepseekd.store.quota import QuotaService

log = logging.getLogger("deepseekd")

EngineFactory = Callable[[], AsyncContextManager[Engine]]

WARMUP_PROMPT = [{"role": "user", "content": "Warm-up check: reply with the word ready."}]
HEALTH_INTERVAL_S = 1.0


def default_warmup_requests(device: str) -> int:
    """The original design warms with 100 empty inferences; real generations do more per call.

    On a CPU box each generation costs seconds, and two cover the tokenizer, template,
    sampler and prefix cache. A GPU box batches, so 8 concurrent ones also exercise batched
    decoding at the cost of well under a second.
    """
    return 2 if device == "cpu" else 8


async def warmup(engine: Engine, life: Lifecycle, settings: Settings,
                 notifier: Notifier | None = None) -> None:
    total = settings.warmup.requests
    if total < 0:
        total = default_warmup_requests(engine.device)
    life.warmup_total = total
    if total == 0:
        return
    prompt_ids = await engine.encode_chat(WARMUP_PROMPT)
    options = GenerationOptions(max_tokens=settings.warmup.max_tokens, temperature=0.0)
    concurrency = 1 if engine.device == "cpu" else total
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            gen = engine.generate(prompt_ids, options, f"warmup-{i}", stream=False)
            async with contextlib.aclosing(gen):
                async for _ in gen:
                    pass
            life.warmup_done += 1
            if notifier is not None:
                notifier.status(f"warming up {life.warmup_done}/{total}")
            log.info("warming up", extra={"done": life.warmup_done, "total": total})

    await asyncio.gather(*(one(i) for i in range(total)))


async def _boot(app: web.Application, factory: EngineFactory, stack: contextlib.AsyncExitStack) -> None:
    """Load the engine, warm it, mark ready, then watch it until it dies."""
    life = app[LIFECYCLE]
    settings = app[SETTINGS]
    try:
        log.info("loading model", extra={"model": life.model_name})
        app[NOTIFIER].status(f"loading model {life.model_name}")
        engine = await stack.enter_async_context(factory())
        await app[LORA].restore(engine)  # adapters loaded before a restart, before any request
        life.engine = engine
        life.phase = Phase.WARMING
        await warmup(engine, life, settings, app[NOTIFIER])
        if life.phase is Phase.WARMING:
            life.phase = Phase.READY
            app[NOTIFIER].ready(f"ready: serving {life.model_name}")
            log.info("ready", extra={"model": life.model_name,
                                     "max_model_len": engine.max_model_len})
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await engine.check_health()
    except asyncio.CancelledError:
        raise
    except EngineUnavailable as exc:
        log.error("engine died; stopping so the service manager restarts the daemon",
                  extra={"reason": str(exc)})
        life.fail(f"engine died: {exc}")
    except Exception as exc:
        log.exception("engine failed to start")
        life.fail(f"engine failed to start: {type(exc).__name__}: {exc}")


def build_app(
    settings: Settings,
    factory: EngineFactory,
    model_name: str,
    *,
    clock: Callable[[], float] = time.time,
    model_sha256: str | None = None,
) -> web.Application:
    """Wire the rooms. Start-up order: master key, database (migrated, key checked), then
    the engine. A missing master key stops here, before anything else starts."""
    # Backpressure sits after the drain gate and before authentication: refusing is cheap.
    middlewares = [request_id_middleware, error_middleware, lifecycle_middleware,
                   backpressure.backpressure_middleware, auth_middleware]
    app = web.Application(middlewares=middlewares, client_max_size=settings.server.max_body_bytes)
    life = Lifecycle(model_name)
    db = Database(settings.database_url, busy_timeout_ms=settings.store.busy_timeout_ms,
                  pool_size=settings.store.pool_size)
    keys = KeyService(db, Keyring.for_data_dir(settings.data_dir), clock)
    audit = AuditLog(db, keys.cached_audit_key, clock)
    metrics_ = Metrics()
    audit.on_failure = metrics_.audit_write_failures.inc
    app[METRICS] = metrics_
    app[NOTIFIER] = Notifier.from_env()
    app[TRACING] = tracing = Tracing(settings.obs.otlp_endpoint)
    app.on_cleanup.append(lambda _app: asyncio.to_thread(tracing.shutdown))

    def engine_stat(name: str) -> Callable[[], float]:
        return lambda: float(getattr(life.engine.stats(), name)) if life.engine else 0.0

    bind_gauges(
        metrics_,
        # Up while loading, warming or serving; down once dead (NotReady covers loading).
        engine_up=lambda: float(life.phase is not Phase.DEAD
                                and not (life.engine is not None and life.engine.dead)),
        ready=lambda: float(life.phase is Phase.READY),
        running=engine_stat("running"), waiting=engine_stat("waiting"),
        kv_usage=engine_stat("kv_cache_usage"))
    metrics_.build_info.labels(__version__, model_name, model_sha256 or "").set(1)
    app[SETTINGS] = settings
    backpressure.setup(app)
    app[LIFECYCLE] = life
    app[CLOCK] = clock
    app[DATABASE] = db
    app[KEYS] = keys
    app[AUDIT] = audit
    app[ACCOUNTS] = AccountService(db, settings.auth, settings.quota, clock, audit,
                                   SecretBox(keys.cached_totp_key))
    app[ACCOUNTS].on_lockout = metrics_.lockouts.inc
    app[QUOTA] = QuotaService(db, settings.quota, clock)
    app[HISTORY] = HistoryService(db, keys, audit, clock)
    app[LORA] = lora.LoraService(settings, AdapterRegistry(db, audit, clock), life, clock)
    app[INFERENCE] = InferenceService(life, settings.api, app[LORA])
    app[MODEL_SHA256] = model_sha256 or ""
    app[RUNTIME] = runtime = RuntimeSettings(settings, SettingsStore(db, audit, clock), app[QUOTA])
    app.on_response_prepare.append(add_request_id)
    for group in (health.routes, openai.routes, history.routes, admin.routes, lora.routes,
                  audit_api.routes, metrics.routes, web_pages.routes):
        app.add_routes(group)
    openapi.setup(app)

    async def database_ctx(app: web.Application) -> AsyncIterator[None]:
        try:
            before, head = await db.upgrade()  # refuses a schema newer than this code
            if before != head:
                log.info("database migrated", extra={"from": before, "to": head})
            await keys.check()  # refuses a wrong or missing master key
            await runtime.load()
            await audit.append(Event(action="service.start", detail=f"deepseekd {__version__}, "
                                     f"model {model_name}, schema {head}"))
            await audit.append(Event(action="config.load", detail=settings_digest(settings)))
            yield
            with contextlib.suppress(AuditUnavailable):
                await audit.append(Event(action="service.stop",
                                         detail=f"exit code {life.exit_code}"))
        finally:
            await db.engine.dispose()

    async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
        stack = contextlib.AsyncExitStack()
        task = asyncio.create_task(_boot(app, factory, stack), name="engine-boot")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            life.engine = None
            await stack.aclose()

    async def maintenance_ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(Maintenance(app).run(), name="maintenance")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(maintenance_ctx)
    app.cleanup_ctx.append(engine_ctx)
    return app


def settings_digest(settings: Settings) -> str:
    """What configuration the daemon runs with, as a digest (no values in the audit log)."""
    values = dataclasses.asdict(settings)
    values.pop("explicit")  # where a value came from is not part of the configuration
    text = json.dumps(values, default=str, sort_keys=True)
    return "settings sha256=" + hashlib.sha256(text.encode()).hexdigest()


MAINTENANCE_TICK_S = 60.0


class Maintenance:
    """Periodic upkeep: retention purge (daily), the audit head written to the log (an anchor
    outside the database), and automatic master key rotation when the key is old enough."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._last: dict[str, float] = {}

    def _due(self, what: str, every_s: float, now: float) -> bool:
        if now - self._last.get(what, float("-inf")) < every_s:
            return False
        self._last[what] = now
        return True

    async def tick(self, now: float | None = None) -> None:
        app, settings = self._app, self._app[SETTINGS]
        now = time.monotonic() if now is None else now
        if self._due("purge", 86400, now):
            purged = await app[HISTORY].purge(app[RUNTIME].retention_days)
            if purged:
                log.info("retention purge", extra={"conversations": purged})
            await app[ACCOUNTS].prune()  # old failed attempts and ended admin sessions
        if self._due("head", settings.audit.head_log_interval_s, now):
            seq, digest = await app[AUDIT].head()
            log.info("audit head", extra={"audit_seq": seq, "audit_hash": digest})
        if settings.keys.rotation_days and self._due("rotation", 3600, now):
            if await app[KEYS].current_key_age() >= settings.keys.rotation_days * 86400:
                retired, current = await app[KEYS].rotate(settings.keys_dir)
                await app[AUDIT].append(Event(action="keys.rotate", role="service",
                                              detail=f"automatic: v{','.join(map(str, retired))} -> v{current}"))

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("maintenance failed; retrying on the next tick")
            await asyncio.sleep(MAINTENANCE_TICK_S)


class Listener:
    """The listening socket and the site serving it. TLS files are re-read when they change:
    a new site with the new context starts on a duplicate of the same listening socket, then
    the old site stops accepting; the socket never closes, so no connection is refused, and
    connections already open keep their context until they end."""

    def __init__(self, runner: web.AppRunner, settings: Settings, metrics: Metrics) -> None:
        self._runner = runner
        self._cfg = settings.server
        self._metrics = metrics
        self._tls = TlsReloader(self._cfg.tls) if self._cfg.tls.cert else None
        self._sock: socket.socket | None = None
        self._site: web.BaseSite | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self._cfg.host}:{self._cfg.port}"

    async def start(self) -> None:
        self._sock = socket.create_server((self._cfg.host, self._cfg.port), backlog=1024,
                                          reuse_port=False)
        self._sock.setblocking(False)
        self._site = await self._start_site(self._sock)
        if self._tls:
            self._metrics.tls_expiry.set(self._tls.current.not_after)

    async def _start_site(self, sock: socket.socket) -> web.BaseSite:
        site = web.SockSite(self._runner, sock,
                            ssl_context=self._tls.current.context if self._tls else None)
        await site.start()
        return site

    async def watch_tls(self) -> None:
        assert self._tls is not None and self._sock is not None
        while True:
            await asyncio.sleep(self._cfg.tls.reload_interval_s)
            if self._tls.poll() is None:
                continue
            old = self._site
            self._site = await self._start_site(self._sock.dup())
            if old is not None:
                await old.stop()
            self._metrics.tls_expiry.set(self._tls.current.not_after)


async def run_daemon(app: web.Application) -> int:
    """Serve until SIGTERM/SIGINT or engine death; drain; return the process exit code."""
    settings = app[SETTINGS]
    life = app[LIFECYCLE]
    notifier = app[NOTIFIER]
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=5.0)
    notifier.status("starting: checking the database and master key")
    await runner.setup()
    tasks: list[asyncio.Task[None]] = []
    try:
        listener = Listener(runner, settings, app[METRICS])
        try:
            await listener.start()
        except (OSError, TlsError) as exc:
            log.error("cannot listen", extra={"host": settings.server.host,
                                              "port": settings.server.port, "error": str(exc)})
            life.exit_code = 1
            return 1
        log.info("listening", extra={"url": listener.url})
        if settings.server.tls.cert:
            tasks.append(asyncio.create_task(listener.watch_tls(), name="tls-reload"))
        if notifier.watchdog_interval() is not None:
            tasks.append(asyncio.create_task(notifier.watchdog_loop(), name="watchdog"))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, life.stop_requested.set)
        await life.stop_requested.wait()
        notifier.stopping()
        if life.phase is not Phase.DEAD:
            life.begin_drain()
            notifier.status(f"draining {life.inflight} requests")
            log.info("draining", extra={"in_flight": life.inflight})
            if not await life.wait_idle(settings.server.drain_timeout_s):
                log.warning("drain timeout; stopping with requests in flight",
                            extra={"in_flight": life.inflight})
        else:
            notifier.status(f"stopping: {life.failure}")
            log.error("stopping", extra={"reason": life.failure})
        return life.exit_code
    finally:
        for task in tasks:
            task.cancel()
        await runner.cleanup()
        log.info("stopped", extra={"exit_code": life.exit_code})
