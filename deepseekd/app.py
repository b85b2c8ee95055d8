"""build_app wires the rooms; run_daemon owns start-up, readiness, drain and exit code."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import AsyncContextManager, AsyncIterator, Callable

from aiohttp import web

from deepseekd.api import admin, health, metrics, openai
from deepseekd.api.inference import InferenceService
from deepseekd.api.middlewares import MIDDLEWARES, add_request_id
from deepseekd.config import Settings
from deepseekd.engine.types import Engine, EngineUnavailable, GenerationOptions
from deepseekd.keys import ACCOUNTS, CLOCK, DATABASE, INFERENCE, LIFECYCLE, QUOTA, SETTINGS
from deepseekd.lifecycle import Lifecycle, Phase
from deepseekd.store.accounts import AccountService
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


async def warmup(engine: Engine, life: Lifecycle, settings: Settings) -> None:
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
            log.info("warming up", extra={"done": life.warmup_done, "total": total})

    await asyncio.gather(*(one(i) for i in range(total)))


async def _boot(app: web.Application, factory: EngineFactory, stack: contextlib.AsyncExitStack) -> None:
    """Load the engine, warm it, mark ready, then watch it until it dies."""
    life = app[LIFECYCLE]
    settings = app[SETTINGS]
    try:
        log.info("loading model", extra={"model": life.model_name})
        engine = await stack.enter_async_context(factory())
        life.engine = engine
        life.phase = Phase.WARMING
        await warmup(engine, life, settings)
        if life.phase is Phase.WARMING:
            life.phase = Phase.READY
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
) -> web.Application:
    """Wire the rooms. Start-up order: database (migrated) first, then the engine."""
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=settings.server.max_body_bytes)
    life = Lifecycle(model_name)
    db = Database(settings.database_url, busy_timeout_ms=settings.store.busy_timeout_ms,
                  pool_size=settings.store.pool_size)
    app[SETTINGS] = settings
    app[LIFECYCLE] = life
    app[CLOCK] = clock
    app[DATABASE] = db
    app[ACCOUNTS] = AccountService(db, settings.auth, settings.quota, clock)
    app[QUOTA] = QuotaService(db, settings.quota, clock)
    app[INFERENCE] = InferenceService(life, settings.api)
    app.on_response_prepare.append(add_request_id)
    for group in (health.routes, openai.routes, admin.routes, metrics.routes):
        app.add_routes(group)

    async def database_ctx(app: web.Application) -> AsyncIterator[None]:
        try:
            before, head = await db.upgrade()  # refuses a schema newer than this code
            if before != head:
                log.info("database migrated", extra={"from": before, "to": head})
            yield
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

    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(engine_ctx)
    return app


async def run_daemon(app: web.Application) -> int:
    """Serve until SIGTERM/SIGINT or engine death; drain; return the process exit code."""
    settings = app[SETTINGS]
    life = app[LIFECYCLE]
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        try:
            await site.start()
        except OSError as exc:
            log.error("cannot listen", extra={"host": settings.server.host,
                                              "port": settings.server.port, "error": str(exc)})
            return 1
        log.info("listening", extra={"url": f"http://{settings.server.host}:{settings.server.port}"})
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, life.stop_requested.set)
        await life.stop_requested.wait()
        if life.phase is not Phase.DEAD:
            life.begin_drain()
            log.info("draining", extra={"in_flight": life.inflight})
            if not await life.wait_idle(settings.server.drain_timeout_s):
                log.warning("drain timeout; stopping with requests in flight",
                            extra={"in_flight": life.inflight})
        else:
            log.error("stopping", extra={"reason": life.failure})
        return life.exit_code
    finally:
        await runner.cleanup()
        log.info("stopped", extra={"exit_code": life.exit_code})
