"""The daemon's life: loading → warming → ready → draining, or dead; and in-flight requests."""

from __future__ import annotations

import asyncio
import enum
import time

from deepseekd.engine.types import Engine


class Phase(enum.Enum):
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    DRAINING = "draining"
    DEAD = "dead"


class Lifecycle:
    """Shared by the middlewares, the health routes and the boot task; one per app."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.started_at = int(time.time())
        self.phase = Phase.LOADING
        self.engine: Engine | None = None
        self.warmup_done = 0
        self.warmup_total = 0
        self.failure: str | None = None
        self.exit_code = 0
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.stop_requested = asyncio.Event()

    @property
    def draining(self) -> bool:
        return self.phase in (Phase.DRAINING, Phase.DEAD)

    def fail(self, reason: str, exit_code: int = 1) -> None:
        """The engine cannot serve: stop the daemon with a non-zero code (systemd restarts it)."""
        self.phase = Phase.DEAD
        self.failure = reason
        self.exit_code = exit_code
        self.stop_requested.set()

    def begin_drain(self) -> None:
        if self.phase is not Phase.DEAD:
            self.phase = Phase.DRAINING

    def enter(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    @property
    def inflight(self) -> int:
        return self._inflight

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False when the timeout ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
