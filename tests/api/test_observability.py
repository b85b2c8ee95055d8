"""Metrics, JSON logs and traces of the in-process app (real SQLite, FakeEngine)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from deepseekd.http.state import ACCOUNTS, TRACING
from deepseekd.obs.logs import QUIET_LOGGERS, JsonFormatter, setup_logging
from tests.api.conftest import Daemon, MakeDaemon


async def _metrics(d: Daemon, key: str) -> dict[str, list[Any]]:
    r = await d.client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
    assert r.status == 200
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(await r.text()):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


async def test_metrics_after_traffic(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    admin = await d.app[ACCOUNTS].create_user("ops", "metrics")
    for stream in (False, True):
        r = await d.post("/v1/chat/completions", {
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": stream})
        assert r.status == 200
        await r.read()
    await d.client.get("/v1/models", headers={"Authorization": "Bearer dsk-nope"})
    m = await _metrics(d, admin.api_key)
    http = [s for s in m["http_request_duration_seconds_count"]
            if s.labels["route"] == "/v1/chat/completions"]
    assert http and all(s.labels["service"] == "deepseek" for s in http)
    assert sum(s.value for s in http) == 2
    assert m["deepseekd_time_to_first_token_seconds_count"][0].value == 2
    assert m["deepseekd_e2e_request_latency_seconds_count"][0].value == 2
    assert m["deepseekd_completion_tokens_total"][0].value == 10
    assert m["deepseekd_prompt_tokens_total"][0].value > 0
    assert m["deepseekd_auth_failures_total"][0].value >= 1
    assert m["deepseekd_engine_up"][0].value == 1 and m["deepseekd_ready"][0].value == 1
    assert m["deepseekd_requests_running"][0].value == 0
    (info,) = m["deepseekd_build_info"]
    assert info.labels["model"] == "fake-model" and info.labels["version"]
    # No GPU here: the GPU series are absent, and nothing failed.
    assert not any(name.startswith("deepseekd_gpu_") for name in m)


def test_json_log_lines_carry_the_fields_and_no_content(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    rec = logging.LogRecord("deepseekd.http", logging.INFO, __file__, 1, "request", None, None)
    rec.request_id, rec.route, rec.status, rec.duration_ms, rec.user_id = "r1", "/x", 200, 1.5, 7
    line = json.loads(JsonFormatter().format(rec))
    assert {"time", "level", "logger", "msg", "request_id", "route", "status", "duration_ms",
            "user_id"} <= set(line)


async def test_logs_hold_no_prompt_answer_or_secret(make_daemon: MakeDaemon,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("DEBUG")  # the daemon's own configuration, at its most verbose
    root.addHandler(caplog.handler)
    try:
        await _drive_and_check(make_daemon, caplog)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)


async def _drive_and_check(make_daemon: MakeDaemon, caplog: pytest.LogCaptureFixture) -> None:
    d = await make_daemon()
    secret_prompt = "my diagnosis is Zorblax-7731"
    r = await d.post("/v1/chat/completions",
                     {"messages": [{"role": "user", "content": secret_prompt}], "max_tokens": 3})
    answer = (await r.json())["choices"][0]["message"]["content"]
    admin = await d.app[ACCOUNTS].create_user("boss", "admin")
    await d.client.post("/admin/api/login", json={"username": "boss",
                                                  "password": admin.password, "totp": "000000"})
    text = "\n".join(JsonFormatter().format(rec) for rec in caplog.records)
    assert "request" in text  # the request log lines are there
    for needle in (secret_prompt, "Zorblax", answer, d.key, admin.api_key, admin.password,
                   admin.totp_uri.split("secret=")[1].split("&")[0]):
        assert needle not in text


async def test_traces_reach_a_collector_when_configured(make_daemon: MakeDaemon) -> None:
    got: list[bytes] = []

    async def receive(request: web.Request) -> web.Response:
        got.append(await request.read())
        return web.Response(status=200)

    collector = web.Application()
    collector.router.add_post("/v1/traces", receive)
    runner = web.AppRunner(collector)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        d = await make_daemon(env={"DEEPSEEKD_OBS__OTLP_ENDPOINT": f"http://127.0.0.1:{port}"})
        r = await d.post("/v1/chat/completions",
                         {"messages": [{"role": "user", "content": "traced"}], "max_tokens": 2})
        assert r.status == 200
        await asyncio.to_thread(d.app[TRACING].shutdown)  # flush
        assert got, "no spans were exported"
        blob = b"".join(got)
        assert b"/v1/chat/completions" in blob and b"http.route" in blob
        assert b"traced" not in blob  # never content
    finally:
        await runner.cleanup()
