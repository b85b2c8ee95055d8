"""`make test` on a GPU box (item 4 of the GPU issue): with the default 0.85 the session
daemon held the GPU and every test that starts a second daemon was refused by preflight.
Each test daemon now takes a small share; this checks, with the NVML tables of real cards,
that the session daemon plus two more still pass preflight on one GPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from deepseekd.engine import preflight as pf
from deepseekd.engine.gpus import Gpu, read_nvml
from tests.support import box
from tests.support.fake_nvml import BOXES, FakeNvml
from tests.unit.test_preflight import engine, smollm2


def first_gpu(name: str) -> Gpu:
    reading = read_nvml(FakeNvml(BOXES[name]))
    assert reading is not None
    return reading.gpus[0]


@pytest.mark.parametrize("name, share", [("rtx4090", "0.17"), ("a100-40gb", "0.10"),
                                         ("h100", "0.06"), ("h200", "0.05")])
def test_three_test_daemons_fit_one_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        name: str, share: str) -> None:
    gpu = first_gpu(name)
    box.gpus.cache_clear()
    box.engine_env.cache_clear()
    monkeypatch.setattr(box, "gpus", lambda: (gpu,))
    try:
        env = box.engine_env()
    finally:
        box.engine_env.cache_clear()
    assert env == {"DEEPSEEKD_ENGINE__GPU_MEMORY_UTILIZATION": share}
    util = float(share)
    e = engine(max_model_len=2048, gpu_memory_utilization=util)
    folder = smollm2(tmp_path)
    for running in range(3):  # the session daemon, then a second and a third beside it
        taken = int(running * (util * gpu.total + pf.CUDA_CONTEXT_BYTES))
        now = dataclasses.replace(gpu, free=gpu.free - taken)
        assert pf.preflight(e, folder, "cuda", [now]).notes[0].startswith("fits GPU 0")
    # The old default: the second daemon is refused.
    old = engine(max_model_len=2048, gpu_memory_utilization=0.85)
    busy = dataclasses.replace(gpu, free=gpu.free - int(0.85 * gpu.total))
    with pytest.raises(pf.PreflightError, match="is free"):
        pf.preflight(old, folder, "cuda", [busy])


def test_a_cpu_box_gets_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    box.engine_env.cache_clear()
    monkeypatch.setattr(box, "gpus", lambda: ())
    try:
        assert box.engine_env() == {}
    finally:
        box.engine_env.cache_clear()
