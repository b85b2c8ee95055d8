"""Which box the suite runs on: the GPU build of vLLM with an NVIDIA GPU, or the CPU build.

`make test` runs on both. On a GPU box every test daemon takes a small share of the GPU
(the default, 0.85, would leave no room for the second daemon some tests start), tests
marked ``cpu_only`` (what only the CPU engine does, e.g. refusing fp8) are skipped, and
tests marked ``gpu_only`` run (e.g. fp8 serving on compute capability 8.9 or newer).
"""

from __future__ import annotations

import math
from functools import cache

from deepseekd.engine.gpus import Gpu, read_nvml, visible_gpus
from deepseekd.engine.platform import installed_build

TEST_DAEMON_GPU_BYTES = 4 * 1024**3
"""SmolLM2-135M at 2048 tokens with vLLM's profiling batch: well under this."""


@cache
def gpus() -> tuple[Gpu, ...]:
    """The GPUs a test daemon would use; () on a CPU box or with the CPU build."""
    if not installed_build().gpu:
        return ()
    reading = read_nvml()
    if reading is None or reading.error:
        return ()
    return tuple(visible_gpus(reading).gpus)


def on_gpu() -> bool:
    return bool(gpus())


def capability() -> tuple[int, int] | None:
    return min((g.capability for g in gpus() if g.capability), default=None)


@cache
def engine_env() -> dict[str, str]:
    """DEEPSEEKD_* settings every test daemon gets on this box ({} on a CPU box)."""
    if not on_gpu():
        return {}
    total = gpus()[0].total
    share = max(0.05, math.ceil(TEST_DAEMON_GPU_BYTES / total * 100) / 100)
    return {"DEEPSEEKD_ENGINE__GPU_MEMORY_UTILIZATION": f"{share:.2f}"}
