"""The real aiohttp app, in-process, over a FakeEngine."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from deepseekd.daemon import build_app
from deepseekd.config import Settings, load_settings
from deepseekd.http.state import ACCOUNTS, LIFECYCLE
from deepseekd.services.lifecycle import Lifecycle
from deepseekd.security.keyring import create_master_key

try:
    from tests.fakes import FakeEngine
except ImportError:  # run without the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.fakes import FakeEngine

MODEL = "fake-model"
READY_TIMEOUT_S = 5.0


@dataclass
class Daemon:
    client: TestClient
    app: web.Application
    engine: FakeEngine
    key: str
    settings: Settings

    @property
    def life(self) -> Lifecycle:
        return self.app[LIFECYCLE]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        return await self.client.post(path, json=body, headers={**self.auth, **(headers or {})})

    async def post_json(self, path: str, body: Any, status: int = 200,
                        headers: dict[str, str] | None = None) -> dict[str, Any]:
        resp = await self.post(path, body, headers)
        text = await resp.text()
        assert resp.status == status, text
        return json.loads(text)

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            resp = await self.client.get("/readyz")
            body = await resp.json()
            if resp.status == 200:
                return
            assert loop.time() < deadline, f"not ready after {timeout}s: {body}"
            await asyncio.sleep(0.01)


MakeDaemon = Callable[..., Awaitable[Daemon]]


async def _settled(db_file: Path, timeout: float = READY_TIMEOUT_S) -> None:
    """Wait until the daemon's start-up writes (boot audit events, the first maintenance
    tick) are done. Tests then write to the SQLite file behind its back from the event loop's
    own thread; an in-flight write of the daemon could not finish meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        conn = sqlite3.connect(db_file, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            assert loop.time() < deadline, "the daemon's start-up writes never finished"
        finally:
            conn.close()
        await asyncio.sleep(0.01)


class FakeClock:
    """An injectable ``clock()`` for ``make_daemon(clock=...)``: starts near the real time,
    on the first second of a TOTP step, and only moves when told to."""

    def __init__(self, start: float | None = None) -> None:
        self.now = float(start if start is not None else int(time.time()) // 30 * 30)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_daemon(aiohttp_client: Any, tmp_path: Path) -> MakeDaemon:
    """``await make_daemon(engine=FakeEngine(...), env={...}, ready=True)``."""

    async def make(
        engine: FakeEngine | None = None,
        env: dict[str, str] | None = None,
        ready: bool = True,
        clock: Callable[[], float] | None = None,
    ) -> Daemon:
        fake = engine or FakeEngine(model_name=MODEL)
        if not (tmp_path / "keys").exists():
            create_master_key(tmp_path / "keys", 1)  # what `deepseekd init` does
        settings = load_settings(
            path=None,
            env={
                "DEEPSEEKD_DATA_DIR": str(tmp_path),
                # One short warmup generation: the warming phase runs, but quickly.
                "DEEPSEEKD_WARMUP__REQUESTS": "1",
                "DEEPSEEKD_WARMUP__MAX_TOKENS": "2",
                **(env or {}),
            },
        )
        kwargs = {"clock": clock} if clock is not None else {}
        app = build_app(settings, lambda: fake, MODEL, **kwargs)
        client = await aiohttp_client(app)  # starts the app: the SQLite file is migrated
        user = await app[ACCOUNTS].create_user("tester", "user")
        daemon = Daemon(client, app, fake, user.api_key, settings)
        if ready:
            await daemon.wait_ready()
            await _settled(tmp_path / "deepseekd.db")
        return daemon

    return make


@pytest.fixture
async def daemon(make_daemon: MakeDaemon) -> Daemon:
    return await make_daemon()
