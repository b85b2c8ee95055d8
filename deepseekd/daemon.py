"""The daemon: boot (engine, warmup, readiness), the listener (TLS hot reload), maintenance,
and the drain on SIGTERM. ``serve`` is ``deepseekd serve``: it checks the box and the model
before anything heavy starts, then runs until stopped and returns the exit code."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from aiohttp import web

from deepseekd import __version__
from deepseekd.config import ConfigError, Settings
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import AuditUnavailable, Conflict
from deepseekd.engine.types import Engine, EngineUnavailable, GenerationOptions
from deepseekd.http.app import create_app
from deepseekd.http.state import LIFECYCLE, METRICS, NOTIFIER, SERVICES, SETTINGS
from deepseekd.obs import heap
from deepseekd.obs.metrics import Metrics, bind_gauges
from deepseekd.obs.systemd import Notifier
from deepseekd.obs.tracing import Tracing
from deepseekd.security.tls import TlsError, TlsReloader
from deepseekd.services import doctor
from deepseekd.services.cluster import ClusterSync
from deepseekd.services.container import Services
from deepseekd.services.lifecycle import Lifecycle, Phase
from deepseekd.services.maintenance import TICK_S, Maintenance, log_anchor
from deepseekd.services.siem import SiemForwarder

log = logging.getLogger("deepseekd")

EngineFactory = Callable[[], AbstractAsyncContextManager[Engine]]

WARMUP_PROMPT = [{"role": "user", "content": "Warm-up check: reply with the word ready."}]
HEALTH_INTERVAL_S = 1.0


class ServeError(Conflict):
    """The daemon cannot start: a problem the operator can fix, printed as one line."""


def default_warmup_requests(device: str) -> int:
    """The original design warms with 100 empty inferences; real generations do more per call.

    On a CPU box each generation costs seconds, and two cover the tokenizer, template,
    sampler and prefix cache. A GPU box batches, so 8 concurrent ones also exercise batched
    decoding at the cost of well under a second.
    """
    return 2 if device == "cpu" else 8


async def warmup(
    engine: Engine, life: Lifecycle, settings: Settings, notifier: Notifier | None = None
) -> None:
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


async def _boot(
    app: web.Application,
    factory: EngineFactory,
    stack: contextlib.AsyncExitStack,
    freeze_heap: bool,
) -> None:
    """Load the engine, warm it, mark ready, then watch it until it dies."""
    svc = app[SERVICES]
    life, notifier = svc.life, app[NOTIFIER]
    try:
        log.info("loading model", extra={"model": life.model_name})
        notifier.status(f"loading model {life.model_name}")
        engine = await stack.enter_async_context(factory())
        await svc.lora.restore(engine)  # adapters loaded before a restart, before any request
        life.engine = engine
        life.phase = Phase.WARMING
        await warmup(engine, life, svc.settings, notifier)
        if life.phase is Phase.WARMING:
            if freeze_heap:
                _freeze_heap(app[METRICS])
            life.phase = Phase.READY
            notifier.ready(f"ready: serving {life.model_name}")
            log.info(
                "ready", extra={"model": life.model_name, "max_model_len": engine.max_model_len}
            )
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await engine.check_health()
    except asyncio.CancelledError:
        raise
    except EngineUnavailable as exc:
        log.error(
            "engine died; stopping so the service manager restarts the daemon",
            extra={"reason": str(exc)},
        )
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
    freeze_heap: bool = False,
) -> web.Application:
    """The daemon's app. Start-up order: master key (a missing one stops here, before
    anything starts), database (migrated, key checked), maintenance, then the engine.
    ``freeze_heap``: once ready, the start-up heap leaves the garbage collector's reach
    (``serve`` sets it; an in-process test app leaves the test runner's heap alone)."""
    metrics = Metrics()
    svc = Services.build(settings, model_name=model_name, clock=clock, metrics=metrics)
    siem = SiemForwarder.from_settings(settings.siem, svc.db, svc.audit, metrics, clock)
    tracing = Tracing(settings.obs.otlp_endpoint)
    app = create_app(
        svc, notifier=Notifier.from_env(), tracing=tracing, model_sha256=model_sha256 or ""
    )
    _bind_gauges(metrics, svc.life)
    metrics.build_info.labels(__version__, model_name, model_sha256 or "").set(1)
    app.on_cleanup.append(lambda _app: asyncio.to_thread(tracing.shutdown))
    app.cleanup_ctx.append(_gc_ctx)
    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_maintenance_ctx)
    cluster = ClusterSync(
        svc.keys, svc.runtime, svc.lora, svc.erasure, settings.cluster.sync_interval_s, clock
    )
    app.cleanup_ctx.append(lambda _app: _cluster_ctx(cluster))
    if siem is not None:  # after the database: the boot events are its first to send
        app.cleanup_ctx.append(lambda _app: _siem_ctx(siem))
    app.cleanup_ctx.append(lambda app: _engine_ctx(app, factory, freeze_heap))
    return app


def _bind_gauges(metrics: Metrics, life: Lifecycle) -> None:
    def engine_stat(name: str) -> Callable[[], float]:
        return lambda: float(getattr(life.engine.stats(), name)) if life.engine else 0.0

    bind_gauges(
        metrics,
        # Up while loading, warming or serving; down once dead (NotReady covers loading).
        engine_up=lambda: float(
            life.phase is not Phase.DEAD and not (life.engine is not None and life.engine.dead)
        ),
        ready=lambda: float(life.phase is Phase.READY),
        running=engine_stat("running"),
        waiting=engine_stat("waiting"),
        kv_usage=engine_stat("kv_cache_usage"),
    )


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    """The database at head with the right master key, for as long as the app runs; the
    start, the configuration and the stop are audited."""
    svc = app[SERVICES]
    try:
        before, head = await svc.open(migrate=True)  # refuses a newer schema, a wrong key
        if before != head:
            log.info("database migrated", extra={"from": before, "to": head})
        await svc.audit.append(
            Event(
                action="service.start",
                detail=f"deepseekd {__version__}, model {svc.life.model_name}, schema {head}",
            )
        )
        await svc.audit.append(Event(action="config.load", detail=settings_digest(svc.settings)))
        await svc.auth.directory.record_mapping()  # audited when [[auth.group]] changed
        await log_anchor(svc)
        yield
        with contextlib.suppress(AuditUnavailable):
            await svc.audit.append(
                Event(action="service.stop", detail=f"exit code {svc.life.exit_code}")
            )
    finally:
        await svc.close()


async def _engine_ctx(
    app: web.Application, factory: EngineFactory, freeze_heap: bool
) -> AsyncIterator[None]:
    stack = contextlib.AsyncExitStack()
    task = asyncio.create_task(_boot(app, factory, stack, freeze_heap), name="engine-boot")
    try:
        yield
    finally:
        await _cancelled(task)
        app[SERVICES].life.engine = None
        await stack.aclose()
        if freeze_heap:
            heap.unfreeze()


def _freeze_heap(metrics: Metrics) -> None:
    """The heap at ready is the daemon's for good: out of the collector's reach, so a full
    collection while serving walks only what requests made (obs/heap.py)."""
    objects, took = heap.freeze()
    metrics.gc_frozen_objects.set(objects)
    log.info("start-up heap frozen", extra={"objects": objects, "collect_ms": round(took * 1e3)})


async def _gc_ctx(app: web.Application) -> AsyncIterator[None]:
    with heap.GcWatch(app[METRICS].gc_pause):
        yield


async def _maintenance_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_maintain(Maintenance(app[SERVICES])), name="maintenance")
    try:
        yield
    finally:
        await _cancelled(task)


async def _cluster_ctx(cluster: ClusterSync) -> AsyncIterator[None]:
    """Reports this daemon in the shared database and takes up what other replicas changed
    (services/cluster.py); a clean stop takes it off the list."""
    task = asyncio.create_task(cluster.run(), name="cluster-sync")
    try:
        yield
    finally:
        await _cancelled(task)
        await cluster.leave()


async def _siem_ctx(forwarder: SiemForwarder) -> AsyncIterator[None]:
    """The audit forwarder (services/siem.py) for as long as the app runs."""
    task = asyncio.create_task(forwarder.run(), name="siem-forwarder")
    try:
        yield
    finally:
        await forwarder.stop(task)  # a batch already acknowledged keeps its cursor
        await forwarder.close()


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _maintain(maintenance: Maintenance) -> None:
    while True:
        try:
            await maintenance.tick()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("maintenance failed; retrying on the next tick")
        await asyncio.sleep(TICK_S)


def settings_digest(settings: Settings) -> str:
    """What configuration the daemon runs with, as a digest (no values in the audit log)."""
    values = dataclasses.asdict(settings)
    values.pop("explicit")  # where a value came from is not part of the configuration
    text = json.dumps(values, default=str, sort_keys=True)
    return "settings sha256=" + hashlib.sha256(text.encode()).hexdigest()


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
        self._sock = socket.create_server(
            (self._cfg.host, self._cfg.port), backlog=1024, reuse_port=False
        )
        self._sock.setblocking(False)
        self._site = await self._start_site(self._sock)
        if self._tls:
            self._metrics.tls_expiry.set(self._tls.current.not_after)

    async def _start_site(self, sock: socket.socket) -> web.BaseSite:
        site = web.SockSite(
            self._runner, sock, ssl_context=self._tls.current.context if self._tls else None
        )
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
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0)
    notifier.status("starting: checking the database and master key")
    await runner.setup()
    tasks: list[asyncio.Task[None]] = []
    try:
        listener = Listener(runner, settings, app[METRICS])
        try:
            await listener.start()
        except (OSError, TlsError) as exc:
            log.error(
                "cannot listen",
                extra={
                    "host": settings.server.host,
                    "port": settings.server.port,
                    "error": str(exc),
                },
            )
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
                log.warning(
                    "drain timeout; stopping with requests in flight",
                    extra={"in_flight": life.inflight},
                )
        else:
            notifier.status(f"stopping: {life.failure}")
            log.error("stopping", extra={"reason": life.failure})
        return life.exit_code
    finally:
        for task in tasks:
            task.cancel()
        await runner.cleanup()
        log.info("stopped", extra={"exit_code": life.exit_code})


# --------------------------------------------------------------------------- serve


def serve(settings: Settings) -> int:
    """``deepseekd serve``: check the model, the box and the database, then run the daemon.
    Raises ServeError (or ConfigError) for a problem found before anything loads."""
    from deepseekd.engine import models
    from deepseekd.engine.environment import engine_environment

    model_path, model_name, model_sha = models.resolve_model(
        settings.engine.model, settings.models_dir
    )
    if not settings.store.url and not (settings.data_dir / "deepseekd.db").exists():
        raise ServeError(f"{settings.data_dir} is not initialised; run `deepseekd init` first")
    report = _doctor(settings)
    sampler = report.sampler.value if report.sampler else None
    os.environ.update(engine_environment(settings, flashinfer_sampler=sampler))

    # Only now import vLLM: its environment is set and the box is known to be good.
    from deepseekd.engine.reasoning import ReasoningError
    from deepseekd.engine.vllm_engine import EngineSpec, VllmEngine, device_kind
    from deepseekd.engine.vllm_reasoning import check_parser_name

    try:
        check_parser_name(settings.engine.reasoning_parser)  # before the model loads
    except ReasoningError as exc:
        raise ConfigError(str(exc)) from None
    device = device_kind()
    if settings.engine.device == "cuda" and device == "cpu":
        raise ServeError(
            "engine.device: 'cuda' was asked for, but no GPU is visible to vLLM "
            "(allowed: 'auto', 'cpu', 'cuda')"
        )
    if settings.engine.device == "cpu" and device != "cpu":
        raise ServeError(
            f"engine.device: 'cpu' was asked for, but the installed vLLM runs on {device}"
        )
    fit = report.fit
    assert fit is not None  # a model that did not fit failed the doctor above
    if fit.kv_cache_gib is not None and not settings.engine.kv_cache_gib:
        # The size preflight picked and checked. Read by vLLM when the engine is built
        # (below), and by its spawned engine process.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(fit.kv_cache_gib)
    engine = dataclasses.replace(settings.engine, tensor_parallel_size=fit.tensor_parallel_size)
    spec = EngineSpec(
        model_path,
        model_name,
        engine,
        settings.api.max_logprobs,
        settings.lora,
        quantization=fit.quantization,
    )
    app = build_app(
        settings, lambda: VllmEngine(spec), model_name, model_sha256=model_sha, freeze_heap=True
    )
    return asyncio.run(run_daemon(app))


def _doctor(settings: Settings) -> doctor.Report:
    """``deepseekd doctor``'s checks, logged; a failure stops the start with its fix."""
    if settings.engine.profile != "none":
        log.info(
            "profile", extra={"profile": settings.engine.profile, "model": settings.engine.model}
        )
    report = doctor.diagnose(settings, doctor.gather(settings))
    for c in report.checks:
        level = logging.WARNING if c.status in (doctor.WARN, doctor.FAIL) else logging.INFO
        log.log(level, "doctor", extra={"check": c.name, "status": c.status, "detail": c.detail})
    failures = report.failures()
    if failures:
        raise ServeError(
            "; ".join(c.detail + (f" (fix: {c.fix})" if c.fix else "") for c in failures)
        )
    return report
