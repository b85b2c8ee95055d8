"""The GPU metrics (deepseekd.obs.metrics.GpuCollector) as Prometheus scrapes them and the
admin console reads them, from NVML answers recorded on real boxes
(tests/support/fake_nvml.py), old and broken drivers included."""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from deepseekd.obs.metrics import GpuCollector
from tests.support.fake_nvml import BOXES, MIB, Box, Card, FakeNvml, NVMLError

FAMILIES = [
    "deepseekd_gpu_memory_used_bytes",
    "deepseekd_gpu_memory_total_bytes",
    "deepseekd_gpu_utilization_ratio",
    "deepseekd_gpu_temperature_celsius",
    "deepseekd_gpu_power_watts",
]


def failing(box: Box, *functions: str) -> Box:
    return replace(box, fail=frozenset(functions))


def values(collector: GpuCollector) -> dict[str, dict[str, float]]:
    """{family: {gpu label: value}} of one scrape."""
    out: dict[str, dict[str, float]] = {}
    for fam in collector.collect():
        assert fam.type == "gauge"
        out[fam.name] = {s.labels["gpu"]: s.value for s in fam.samples}
    return out


def test_eight_a100s_one_sample_per_gpu_and_family() -> None:
    scrape = values(GpuCollector(nvml=FakeNvml(BOXES["a100x8"])))
    assert list(scrape) == FAMILIES
    gpus = [str(i) for i in range(8)]
    for name in FAMILIES:
        assert sorted(scrape[name], key=int) == gpus, name
    total, free = 81920 * MIB, 81230 * MIB
    assert scrape["deepseekd_gpu_memory_total_bytes"] == dict.fromkeys(gpus, total)
    assert scrape["deepseekd_gpu_memory_used_bytes"] == dict.fromkeys(gpus, total - free)
    assert scrape["deepseekd_gpu_utilization_ratio"] == dict.fromkeys(gpus, 0.0)
    assert scrape["deepseekd_gpu_temperature_celsius"] == dict.fromkeys(gpus, 34.0)
    assert scrape["deepseekd_gpu_power_watts"] == dict.fromkeys(gpus, 28.0)  # 28000 mW


BUSY = Box("580.95.05", 13000, tuple(
    Card("NVIDIA H100 80GB HBM3", 81559, 81559 - 1000 * (i + 1), (9, 0),
         f"GPU-0000010{i}-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
         temperature=60 + i, power_mw=350_500 + 1000 * i, utilization=97 - i)
    for i in range(2)))


def test_each_gpu_is_reported_under_its_own_label() -> None:
    scrape = values(GpuCollector(nvml=FakeNvml(BUSY)))
    assert scrape["deepseekd_gpu_memory_used_bytes"] == {"0": 1000 * MIB, "1": 2000 * MIB}
    assert scrape["deepseekd_gpu_utilization_ratio"] == {"0": 0.97, "1": 0.96}
    assert scrape["deepseekd_gpu_temperature_celsius"] == {"0": 60.0, "1": 61.0}
    assert scrape["deepseekd_gpu_power_watts"] == {"0": 350.5, "1": 351.5}


def test_snapshot_for_the_console() -> None:
    snap = GpuCollector(nvml=FakeNvml(BOXES["a100x8"])).snapshot()
    assert [g["index"] for g in snap] == list(range(8))
    assert snap[0] == {"index": 0, "memory_used_bytes": 690 * MIB,
                       "memory_total_bytes": 81920 * MIB}


def test_snapshot_sorts_gpu_10_after_gpu_9() -> None:
    card = BOXES["a100"].cards[0]
    box = Box("580.95.05", 13000, tuple(replace(card, uuid=f"GPU-{i:08x}") for i in range(12)))
    snap = GpuCollector(nvml=FakeNvml(box)).snapshot()
    assert [g["index"] for g in snap] == list(range(12))


def test_scraped_through_prometheus_client() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(nvml=FakeNvml(BOXES["rtx4090"])))
    text = generate_latest(registry).decode()
    assert "# TYPE deepseekd_gpu_memory_total_bytes gauge" in text
    assert 'deepseekd_gpu_memory_total_bytes{gpu="0"} 2.5757220864e+10' in text  # 24564 MiB
    assert 'deepseekd_gpu_memory_used_bytes{gpu="0"} 5.07510784e+08' in text  # 484 MiB
    assert 'deepseekd_gpu_temperature_celsius{gpu="0"} 34.0' in text
    assert 'deepseekd_gpu_power_watts{gpu="0"} 28.0' in text


# --------------------------------------------------------------------------- no GPU, broken driver


def test_no_driver_means_no_gpu_metrics() -> None:
    collector = GpuCollector(nvml=FakeNvml(BOXES["rtx4090"], init_error=True))
    assert collector.collect() == []
    assert collector.snapshot() == []


def test_no_nvml_binding_means_no_gpu_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    collector = GpuCollector()
    assert collector.collect() == []
    assert collector.snapshot() == []


def test_a_driver_that_cannot_count_its_gpus_leaves_the_metrics_off() -> None:
    """The bug that was fixed: NVML was kept before the count was read, so every scrape
    raised AttributeError instead of leaving the GPU metrics absent."""
    nvml = FakeNvml(failing(BOXES["a100x8"], "nvmlDeviceGetCount"))
    collector = GpuCollector(nvml=nvml)
    assert (nvml.inits, nvml.shutdowns) == (1, 1)  # NVML is not left initialised
    assert collector.collect() == []
    assert collector.snapshot() == []
    registry = CollectorRegistry()
    registry.register(collector)
    assert b"deepseekd_gpu" not in generate_latest(registry)


# --------------------------------------------------------------------------- temperature


def temperatures(nvml: Any) -> dict[str, float]:
    return values(GpuCollector(nvml=nvml))["deepseekd_gpu_temperature_celsius"]


def test_temperature_is_read_with_the_v_call() -> None:
    """The old call is deprecated (gone with CUDA 14): a driver without it still reads."""
    assert temperatures(FakeNvml(failing(BUSY, "nvmlDeviceGetTemperature"))) == {
        "0": 60.0, "1": 61.0}


def test_an_old_driver_without_the_v_call_falls_back() -> None:
    """An old driver: the binding has the V call, the library answers FunctionNotFound."""
    assert temperatures(FakeNvml(failing(BUSY, "nvmlDeviceGetTemperatureV"))) == {
        "0": 60.0, "1": 61.0}


class OldBinding(FakeNvml):
    """An nvidia-ml-py from before the V call: the attribute does not exist."""

    def __getattribute__(self, name: str) -> Any:
        if name == "nvmlDeviceGetTemperatureV":
            raise AttributeError(name)
        return super().__getattribute__(name)


def test_an_old_binding_without_the_v_call_falls_back() -> None:
    nv = OldBinding(BUSY)
    assert not hasattr(nv, "nvmlDeviceGetTemperatureV")
    assert temperatures(nv) == {"0": 60.0, "1": 61.0}


def test_no_temperature_at_all_loses_only_the_temperature_onwards(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nv = FakeNvml(failing(BUSY, "nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature"))
    with caplog.at_level(logging.WARNING, logger="deepseekd.metrics"):
        scrape = values(GpuCollector(nvml=nv))
    assert scrape["deepseekd_gpu_temperature_celsius"] == {}
    assert scrape["deepseekd_gpu_memory_total_bytes"] == {"0": 81559 * MIB, "1": 81559 * MIB}
    mine = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.gpu for r in mine] == [0, 1]  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- one bad GPU


class LostGpu(FakeNvml):
    """GPU 3 fell off the bus (Xid 79): NVML answers "GPU is lost" for it alone."""

    def nvmlDeviceGetMemoryInfo(self, h: Card) -> Any:
        if h is self.box.cards[3]:
            raise NVMLError("GPU is lost")
        return super().nvmlDeviceGetMemoryInfo(h)


def test_one_bad_gpu_does_not_break_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    collector = GpuCollector(nvml=LostGpu(BOXES["a100x8"]))
    with caplog.at_level(logging.WARNING, logger="deepseekd.metrics"):
        scrape = values(collector)
    assert list(scrape) == FAMILIES
    others = ["0", "1", "2", "4", "5", "6", "7"]
    for name in FAMILIES:
        assert sorted(scrape[name], key=int) == others, name
    # Only the warnings: whether "NVML found" (INFO, logged when the collector was made)
    # is captured depends on the level an earlier test left the logger at.
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "NVML read failed"
    assert (record.gpu, record.error) == (3, "NVMLError")  # type: ignore[attr-defined]
    assert [g["index"] for g in collector.snapshot()] == [0, 1, 2, 4, 5, 6, 7]


def test_every_gpu_failing_still_answers_the_scrape() -> None:
    collector = GpuCollector(nvml=FakeNvml(failing(BOXES["a100x8"], "nvmlDeviceGetMemoryInfo")))
    scrape = values(collector)
    assert list(scrape) == FAMILIES
    assert all(v == {} for v in scrape.values())
    assert collector.snapshot() == []
    registry = CollectorRegistry()
    registry.register(collector)
    assert b"# TYPE deepseekd_gpu_memory_total_bytes gauge" in generate_latest(registry)
