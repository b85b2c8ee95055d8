"""Several daemons on one PostgreSQL (replicas behind a load balancer, or on Kubernetes):
each reports itself in the database every ``[cluster] sync_interval_s`` and takes up what
another replica changed. What every request reads (users, keys, sessions, quotas, history,
the audit chain) is in the database and needs nothing here; what a daemon holds in memory
does: the master key version it wraps with, the runtime settings, the loaded LoRA adapters.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

from deepseekd.services.erasure import ErasureService
from deepseekd.services.keys import KeyService
from deepseekd.services.lora import LoraService
from deepseekd.services.settings import RuntimeSettings

log = logging.getLogger("deepseekd.cluster")

ERASURE_LOOKBACK_S = 60.0


class ClusterSync:
    def __init__(
        self,
        keys: KeyService,
        runtime: RuntimeSettings,
        lora: LoraService,
        erasure: ErasureService,
        interval_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._keys = keys
        self._runtime = runtime
        self._lora = lora
        self._erasure = erasure
        self.interval_s = interval_s
        self._now = clock
        self._pid = os.getpid()
        self._started_at = clock()

    async def tick(self) -> None:
        """One round; each part on its own, so one failing does not stop the others."""
        parts: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("master key", lambda: self._keys.sync(self._pid, self._started_at)),
            ("runtime settings", self._settings),
            ("LoRA adapters", self._lora.sync),
            ("erasures", self._erasures),
        ]
        for name, part in parts:
            try:
                await part()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "cluster sync failed; retrying on the next round", extra={"part": name}
                )

    async def _settings(self) -> None:
        changed = await self._runtime.load()
        if changed:
            log.info("runtime settings changed by another replica", extra={"keys": changed})

    async def _erasures(self) -> None:
        # Clocks of two hosts differ a little: look back a minute; each is taken up once.
        await self._erasure.take_up(min(self._started_at, self._now()) - ERASURE_LOOKBACK_S)

    async def run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.interval_s)

    async def leave(self) -> None:
        """Off the list on a clean stop (a killed replica ages out after three rounds)."""
        try:
            await self._keys.leave(self._pid)
        except Exception:
            log.warning("could not take this replica off the list", exc_info=True)
