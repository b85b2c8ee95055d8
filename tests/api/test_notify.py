"""The daemon's own sd_notify sequence, with a real datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from deepseekd.daemon import build_app, run_daemon
from deepseekd.config import load_settings
from deepseekd.http.state import LIFECYCLE
from deepseekd.services.lifecycle import Phase
from deepseekd.security.keyring import create_master_key
from tests.fakes import FakeEngine
from tests.support.process import free_port


async def test_status_ready_watchdog_stopping(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(path))
    systemd.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    create_master_key(tmp_path / "keys", 1)
    settings = load_settings(path=None, env={
        "DEEPSEEKD_DATA_DIR": str(tmp_path), "DEEPSEEKD_SERVER__PORT": str(free_port()),
        "DEEPSEEKD_WARMUP__REQUESTS": "3", "DEEPSEEKD_WARMUP__MAX_TOKENS": "2"})
    app = build_app(settings, lambda: FakeEngine(), "fake-model")
    task = asyncio.create_task(run_daemon(app))
    try:
        for _ in range(200):
            if app[LIFECYCLE].phase is Phase.READY:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.35)  # a few watchdog periods
        app[LIFECYCLE].stop_requested.set()
        assert await asyncio.wait_for(task, 30) == 0
    finally:
        if not task.done():
            task.cancel()
    messages = []
    while True:
        try:
            messages.append(systemd.recv(4096).decode())
        except BlockingIOError:
            break
    systemd.close()
    statuses = [m for m in messages if m.startswith("STATUS=")]
    assert any("loading model fake-model" in m for m in statuses)
    assert [m for m in statuses if "warming up" in m] == [
        "STATUS=warming up 1/3", "STATUS=warming up 2/3", "STATUS=warming up 3/3"]
    ready = next(i for i, m in enumerate(messages) if m.startswith("READY=1"))
    last_warm = max(i for i, m in enumerate(messages) if "warming up" in m)
    assert ready > last_warm  # READY only after warmup
    assert messages.count("WATCHDOG=1") >= 2
    assert any(m.startswith("STOPPING=1") for m in messages[ready:])
