"""obs/heap.py: collector pauses timed by generation; the start-up heap frozen and given back."""

from __future__ import annotations

import gc
import weakref

from deepseekd.obs import heap
from deepseekd.obs.metrics import Metrics


def _pauses(m: Metrics, generation: str) -> float:
    value = m.registry.get_sample_value(
        "deepseekd_gc_pause_seconds_count", {"generation": generation}
    )
    return value or 0.0


def test_collections_are_timed_by_generation_while_watched() -> None:
    m = Metrics()
    with heap.GcWatch(m.gc_pause):
        gc.collect(0)
        gc.collect(2)
    full, young = _pauses(m, "2"), _pauses(m, "0")
    assert full >= 1 and young >= 1
    total = m.registry.get_sample_value("deepseekd_gc_pause_seconds_sum", {"generation": "2"})
    assert total is not None and total > 0
    gc.collect(2)  # after the watch: no longer observed
    assert _pauses(m, "2") == full


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_freeze_spares_the_heap_but_not_later_garbage() -> None:
    kept = _Node()
    try:
        objects, took = heap.freeze()
        # Frozen objects that die later leave the count (a busy suite frees a few at once).
        assert objects > 1000 and 0 < gc.get_freeze_count() <= objects and took >= 0
        # Garbage made after the freeze is collected as before.
        later = _Node()
        ref = weakref.ref(later)
        del later
        gc.collect()
        assert ref() is None
        # What was alive at the freeze is out of reach: dropped, its cycle stays.
        frozen = weakref.ref(kept)
        del kept
        gc.collect()
        assert frozen() is not None
    finally:
        heap.unfreeze()
    assert gc.get_freeze_count() == 0
    gc.collect()  # given back: the collector frees the cycle now
    assert frozen() is None
