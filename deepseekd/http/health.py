"""Liveness and readiness probes: open to anyone, no details beyond the phase."""

from __future__ import annotations

from aiohttp import web

from deepseekd.http.state import LIFECYCLE
from deepseekd.services.lifecycle import Phase


async def healthz(request: web.Request) -> web.Response:
    """200 while the loop runs and the engine is loading or alive; 503 once it died."""
    life = request.app[LIFECYCLE]
    engine_dead = life.engine is not None and life.engine.dead
    if life.phase is Phase.DEAD or engine_dead:
        return web.json_response({"status": "dead"}, status=503)
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 only after warmup and before drain; the body names the phase for operators."""
    life = request.app[LIFECYCLE]
    body: dict[str, object] = {"status": life.phase.value}
    if life.phase is Phase.WARMING:
        body["warmup"] = f"{life.warmup_done}/{life.warmup_total}"
    ready = life.phase is Phase.READY and not (life.engine is not None and life.engine.dead)
    return web.json_response(
        body, status=200 if ready else 503, headers={"Retry-After": "5"} if not ready else None
    )
