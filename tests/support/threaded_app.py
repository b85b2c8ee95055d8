"""The real app over a FakeEngine, served on a loopback port by a background thread.

For clients that block (schemathesis, requests, many threads): the app's loop runs in its
own thread, and ``call(coro)`` runs a coroutine there (e.g. to create users).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Coroutine

from aiohttp import web

from deepseekd.daemon import build_app
from deepseekd.config import load_settings
from deepseekd.http.state import ACCOUNTS, LIFECYCLE
from deepseekd.services.lifecycle import Phase
from deepseekd.security.keyring import create_master_key
from tests.fakes import FakeEngine
from tests.support.process import free_port


@dataclass
class ThreadedApp:
    url: str
    app: web.Application
    engine: FakeEngine
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    stop_event: asyncio.Event
    users: dict[str, Any] = field(default_factory=dict)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def add_user(self, name: str, role: str, **limits: Any) -> Any:
        new = self.call(self.app[ACCOUNTS].create_user(name, role, **limits))
        self.users[name] = new
        return new

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(60)


def start_threaded_app(data_dir: Path, engine: FakeEngine | None = None,
                       env: dict[str, str] | None = None) -> ThreadedApp:
    engine = engine or FakeEngine(model_name="fake-model")
    create_master_key(data_dir / "keys", 1)
    port = free_port()
    settings = load_settings(path=None, env={
        "DEEPSEEKD_DATA_DIR": str(data_dir), "DEEPSEEKD_SERVER__PORT": str(port),
        "DEEPSEEKD_WARMUP__REQUESTS": "1", "DEEPSEEKD_WARMUP__MAX_TOKENS": "2", **(env or {})})
    app = build_app(settings, lambda: engine, engine.model_name)
    started: Future[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = Future()

    async def serve() -> None:
        stop = asyncio.Event()
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
            started.set_result((asyncio.get_running_loop(), stop))
            await stop.wait()
        finally:
            await runner.cleanup()

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # surface start-up failures to the caller
            if not started.done():
                started.set_exception(exc)
            raise

    thread = threading.Thread(target=main, name="threaded-app", daemon=True)
    thread.start()
    loop, stop = started.result(60)
    ta = ThreadedApp(f"http://127.0.0.1:{port}", app, engine, loop, thread, stop)
    deadline = time.monotonic() + 30
    while app[LIFECYCLE].phase is not Phase.READY:
        assert time.monotonic() < deadline, "threaded app not ready"
        time.sleep(0.02)
    return ta
