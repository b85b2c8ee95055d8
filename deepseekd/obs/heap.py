"""The daemon's Python heap: garbage-collector pauses measured, the start-up heap frozen.

A full (generation 2) collection walks every object the process holds. A daemon that has
imported torch, transformers and vLLM holds millions of them: on the bench box (2 cores)
one full collection stopped the event loop for about 0.9 s, so every stream in flight
stalled and a request arriving then got its first token that much later. vLLM's own API
server freezes its start-up heap for the same reason (``vllm.utils.gc_utils
.freeze_gc_heap``): what is alive once the daemon is ready (modules, the engine client,
compiled statements, caches) moves to the permanent generation, which collections skip.
"""

from __future__ import annotations

import gc
import time
from types import TracebackType
from typing import Any

from prometheus_client import Histogram


class GcWatch:
    """Times every collection into ``histogram`` (labelled by generation) while entered."""

    def __init__(self, histogram: Histogram) -> None:
        self._by_generation = [histogram.labels(str(g)) for g in range(3)]
        self._started: float | None = None

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self._by_generation[info["generation"]].observe(time.perf_counter() - self._started)
            self._started = None

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


def freeze() -> tuple[int, float]:
    """Collect once, then move every surviving object to the permanent generation. Returns
    the objects frozen and the seconds the collection took."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count(), time.perf_counter() - started


def unfreeze() -> None:
    """Give the frozen objects back to the collector (the daemon is stopping)."""
    gc.unfreeze()
