"""The daemon's life: loading → warming → ready → draining, or dead; the requests and the
closing work (sealing, auditing) in flight; and whether the engine can take work now."""

from __future__ import annotations

import asyncio
import enum
import time

from deepseekd.domain.errors import Unavailable
from deepseekd.engine.types import Engine


class Phase(enum.Enum):
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    DRAINING = "draining"
    DEAD = "dead"


class Lifecycle:
    """Shared by the HTTP layer, the services and the boot task; one per daemon."""

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
        self._work = 0
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
        """A request arrived (the drain waits for it)."""
        self._inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self._inflight -= 1
        self._check_idle()

    def begin_work(self) -> None:
        """Work that must finish before the daemon stops, even after its request ended
        (sealing and auditing an answer whose client left)."""
        self._work += 1
        self._idle.clear()

    def end_work(self) -> None:
        self._work -= 1
        self._check_idle()

    def _check_idle(self) -> None:
        if self._inflight == 0 and self._work == 0:
            self._idle.set()

    @property
    def inflight(self) -> int:
        """Requests in flight."""
        return self._inflight

    @property
    def busy(self) -> bool:
        """Requests or closing work in flight."""
        return bool(self._inflight or self._work)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request and no closing work is in flight; False when the timeout ran
        out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def engine_for_work(self, *, warming_ok: bool = False) -> Engine:
        """The engine, or Unavailable saying why it cannot take work now.

        Inference (``warming_ok`` False) runs while ready and while draining: a request
        admitted before SIGTERM (its body still arriving) must finish. Engine maintenance
        (loading a LoRA adapter) may run during warmup too, but not once draining."""
        engine = self.engine
        serving = (Phase.WARMING, Phase.READY) if warming_ok else (Phase.READY, Phase.DRAINING)
        if engine is not None and self.phase in serving:
            return engine
        if self.phase is Phase.LOADING or (self.phase is Phase.WARMING and not warming_ok):
            if warming_ok:
                raise Unavailable("the model is loading; retry shortly", code="warming_up")
            raise Unavailable(
                "the model is loading and warming up; retry shortly", code="warming_up"
            )
        if self.phase is Phase.DRAINING and not warming_ok:
            raise Unavailable("the service is shutting down", code="shutting_down")
        raise Unavailable("the inference engine is not running")
