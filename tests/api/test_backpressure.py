"""server.max_queued_requests: past the limit an inference request gets an immediate 503
server_overloaded with Retry-After, costs no quota, and others are not disturbed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from deepseekd.http.state import ACCOUNTS

from tests.api.helpers import CHAT, CHAT_BODY, bearer, error, ok_json
from tests.fakes import FakeEngine

pytestmark = pytest.mark.reliability

MakeDaemon = Any


async def test_requests_past_the_limit_get_503_with_retry_after(make_daemon: MakeDaemon) -> None:
    gate = asyncio.Event()
    engine = FakeEngine()
    d = await make_daemon(engine=engine, env={"DEEPSEEKD_SERVER__MAX_QUEUED_REQUESTS": "3"})
    engine.generate_gate = gate  # after warm-up: every generation now waits
    user = await d.app[ACCOUNTS].create_user("burst", "user", daily_request_limit=100)
    auth = bearer(user.api_key)
    held = [asyncio.create_task(d.client.post(CHAT, json=CHAT_BODY, headers=auth))
            for _ in range(3)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while engine.in_flight < 3:
        assert loop.time() < deadline, "the three requests never reached the engine"
        await asyncio.sleep(0.01)
    for path, body in ((CHAT, CHAT_BODY), ("/v1/completions", {"prompt": "hi", "max_tokens": 1}),
                       ("/chat", {"prompt": "hi", "max_tokens": 1})):
        resp = await d.client.post(path, json=body, headers=auth)
        err = await error(resp, 503, "server_overloaded")
        assert "capacity" in err["message"] and resp.headers["Retry-After"] == "1"
    # Non-inference routes are not limited.
    await ok_json(await d.client.get("/v1/models", headers=auth))
    await ok_json(await d.client.get("/v1/conversations", headers=auth))
    gate.set()
    for t in held:
        assert (await t).status == 200
    usage = await ok_json(await d.client.get("/auth/session", headers=auth))
    assert usage["quota"]["remaining"] == 100 - 3  # the refused ones cost nothing
    metrics = await d.client.get("/metrics", headers=bearer((await d.app[ACCOUNTS].create_user(
        "prom", "admin")).api_key))
    assert "deepseekd_overload_rejections_total 3.0" in await metrics.text()
    await ok_json(await d.client.post(CHAT, json=CHAT_BODY, headers=auth))  # admitted again
