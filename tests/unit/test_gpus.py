"""The GPUs as NVML reports them (deepseekd.engine.gpus) and the ones CUDA_VISIBLE_DEVICES
leaves to the engine, read from NVML answers recorded on real boxes
(tests/support/fake_nvml.py)."""

from __future__ import annotations

import json
import sys

import pytest

from deepseekd.engine.gpus import NvmlReading, read_nvml, visible_gpus
from tests.support.fake_nvml import BOXES, MIB, V100, Box, Card, FakeNvml, NVMLError

A100_NAME = "NVIDIA A100-SXM4-80GB"
A100X8_UUIDS = [f"GPU-000a180{i}-1c2d-4e5f-8a9b-0c1d2e3f4a5b" for i in range(8)]
MIG_3G = "MIG-00003040-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
MIG_2G = "MIG-00002020-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
A100_UUID = "GPU-0000a180-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def reading_of(box: Box | str, nvml: FakeNvml | None = None) -> NvmlReading:
    nv = nvml or FakeNvml(BOXES[box] if isinstance(box, str) else box)
    reading = read_nvml(nv)
    assert reading is not None and reading.error is None
    return reading


A100X8 = reading_of("a100x8")
MIG = reading_of("a100-mig")


def indices(env: dict[str, str], reading: NvmlReading = A100X8) -> tuple[list[int], str | None]:
    v = visible_gpus(reading, env)
    return [g.index for g in v.gpus], v.problem


# --------------------------------------------------------------------------- reading NVML


DRIVERS = {"rtx4090-driver550": ("550.127.05", "12.4", 12)}


@pytest.mark.parametrize("name", sorted(BOXES))
def test_every_recorded_box_reads_as_nvidia_smi_shows_it(name: str) -> None:
    box = BOXES[name]
    nv = FakeNvml(box)
    reading = read_nvml(nv)
    assert reading is not None and reading.error is None
    assert (nv.inits, nv.shutdowns) == (1, 1)
    driver, cuda, major = DRIVERS.get(name, ("580.95.05", "13.0", 13))
    assert reading.driver_version == driver
    assert reading.cuda_version == cuda
    assert reading.cuda_major == major
    assert len(reading.gpus) == len(box.cards)
    for i, (gpu, card) in enumerate(zip(reading.gpus, box.cards, strict=True)):
        assert gpu.index == i
        assert isinstance(gpu.name, str)  # the binding answered bytes
        assert gpu.name == card.name
        assert gpu.uuid == card.uuid and gpu.uuid.startswith("GPU-")
        assert gpu.total == card.total_mib * 1024**2
        assert gpu.free == card.free_mib * 1024**2
        assert gpu.capability == card.capability
        assert not gpu.mig
        assert gpu.mig_enabled == card.mig
    assert len(reading.migs) == sum(len(c.instances) for c in box.cards)


def test_the_recorded_cards_in_bytes() -> None:
    (rtx,) = reading_of("rtx4090").gpus
    assert (rtx.total, rtx.free) == (25_757_220_864, 25_249_710_080)
    assert rtx.capability == (8, 9)
    (desktop,) = reading_of("rtx4090-desktop").gpus
    assert desktop.total - desktop.free == 2164 * MIB  # what Xorg and the browser hold
    (h200,) = reading_of("h200").gpus
    assert (h200.name, h200.total, h200.capability) == ("NVIDIA H200", 143771 * MIB, (9, 0))


def test_a_card_without_mig_support_is_a_plain_gpu() -> None:
    """nvmlDeviceGetMigMode answers "Not Supported" before Ampere."""
    reading = reading_of(Box("580.95.05", 13000, (V100,)))
    assert reading.gpus[0].mig_enabled is False
    assert reading.gpus[0].capability == (7, 0)
    assert reading.migs == ()


def test_no_driver_is_no_reading() -> None:
    nv = FakeNvml(BOXES["rtx4090"], init_error=True)
    assert read_nvml(nv) is None
    assert nv.shutdowns == 0  # nothing was initialised


def test_no_nvml_binding_is_no_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert read_nvml() is None


@pytest.mark.parametrize("function", ["nvmlDeviceGetCount", "nvmlSystemGetDriverVersion",
                                      "nvmlDeviceGetMemoryInfo"])
def test_a_driver_that_fails_is_reported_and_nvml_still_shut_down(function: str) -> None:
    box = BOXES["a100x8"]
    nv = FakeNvml(Box(box.driver, box.cuda, box.cards, fail=frozenset({function})))
    reading = read_nvml(nv)
    assert reading is not None
    assert reading.error == f"NVML failed: {function}"
    assert reading.gpus == ()
    assert (nv.inits, nv.shutdowns) == (1, 1)


def test_a_failing_shutdown_does_not_lose_the_reading() -> None:
    class ShutdownFails(FakeNvml):
        def nvmlShutdown(self) -> None:
            raise NVMLError("Uninitialized")

    reading = read_nvml(ShutdownFails(BOXES["h100"]))
    assert reading is not None and reading.gpus[0].name == "NVIDIA H100 80GB HBM3"


def test_an_unreadable_compute_capability_is_unknown_not_fatal() -> None:
    class NoCapability(FakeNvml):
        def nvmlDeviceGetCudaComputeCapability(self, h: Card) -> tuple[int, int]:
            raise NVMLError("Not Supported")

    reading = reading_of("a100", NoCapability(BOXES["a100"]))
    assert reading.gpus[0].capability is None
    assert reading.as_json()["gpus"][0]["compute_capability"] is None


def test_as_json() -> None:
    data = reading_of("rtx4090-driver550").as_json()
    assert data == {
        "driver_version": "550.127.05",
        "cuda_driver_version": "12.4",
        "gpus": [{
            "index": 0,
            "uuid": "GPU-00004090-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
            "name": "NVIDIA GeForce RTX 4090",
            "memory_total_bytes": 24564 * MIB,
            "memory_free_bytes": 24080 * MIB,
            "compute_capability": "8.9",
            "mig_enabled": False,
        }],
        "mig_instances": [],
        "error": None,
    }
    assert json.loads(json.dumps(data)) == data


def test_as_json_of_a_failed_reading() -> None:
    assert NvmlReading(error="NVML failed: Unknown Error").as_json() == {
        "driver_version": "", "cuda_driver_version": None, "gpus": [], "mig_instances": [],
        "error": "NVML failed: Unknown Error"}


# --------------------------------------------------------------------------- MIG


def test_mig_instances_are_read_under_their_gpu() -> None:
    (gpu,) = MIG.gpus
    assert gpu.mig_enabled and not gpu.mig
    assert gpu.uuid == A100_UUID
    assert [m.uuid for m in MIG.migs] == [MIG_3G, MIG_2G]
    assert [m.name for m in MIG.migs] == ["NVIDIA A100-SXM4-80GB MIG 3g.40gb",
                                          "NVIDIA A100-SXM4-80GB MIG 2g.20gb"]
    assert [(m.total, m.free) for m in MIG.migs] == [(40192 * MIB, 40140 * MIB),
                                                     (19968 * MIB, 19940 * MIB)]
    for m in MIG.migs:
        assert m.mig and not m.mig_enabled
        assert m.index == 0
        assert m.capability == (8, 0)
    data = MIG.as_json()
    assert data["gpus"][0]["mig_enabled"] is True
    assert [m["uuid"] for m in data["mig_instances"]] == [MIG_3G, MIG_2G]


def test_a_mig_instance_takes_its_gpus_compute_capability() -> None:
    """NVML answers the compute capability through the parent GPU, not the instance."""

    class MigHandlesNoCapability(FakeNvml):
        def nvmlDeviceGetCudaComputeCapability(self, h: Card) -> tuple[int, int]:
            if h.uuid.startswith("MIG-"):
                raise NVMLError("Not Supported")
            return super().nvmlDeviceGetCudaComputeCapability(h)

    reading = reading_of("a100-mig", MigHandlesNoCapability(BOXES["a100-mig"]))
    assert [m.capability for m in reading.migs] == [(8, 0), (8, 0)]


def test_a_gpu_in_mig_mode_is_not_usable_without_naming_an_instance() -> None:
    v = visible_gpus(MIG, {})
    assert v.gpus == []
    assert v.problem == (
        "GPU 0 (NVIDIA A100-SXM4-80GB) in MIG mode: CUDA uses a MIG instance only when "
        "CUDA_VISIBLE_DEVICES names its UUID (nvidia-smi -L)")


def test_a_mig_instance_named_by_uuid_is_the_engines_device() -> None:
    v = visible_gpus(MIG, {"CUDA_VISIBLE_DEVICES": MIG_3G})
    assert v.problem is None
    assert [g.uuid for g in v.gpus] == [MIG_3G]
    assert v.gpus[0].total == 40192 * MIB  # sized from the instance, not the whole A100
    assert v.gpus[0].label == (
        f"MIG instance {MIG_3G} of GPU 0 (NVIDIA A100-SXM4-80GB MIG 3g.40gb)")
    assert [g.uuid for g in visible_gpus(MIG, {"CUDA_VISIBLE_DEVICES": "MIG-00002020"}).gpus] \
        == [MIG_2G]


def test_cuda_enumerates_one_mig_instance_per_process() -> None:
    v = visible_gpus(MIG, {"CUDA_VISIBLE_DEVICES": f"{MIG_3G},{MIG_2G}"})
    assert ([g.uuid for g in v.gpus], v.problem) == ([MIG_3G], None)


@pytest.mark.parametrize("entry", ["0", A100_UUID])
def test_a_gpu_in_mig_mode_named_itself_is_refused(entry: str) -> None:
    v = visible_gpus(MIG, {"CUDA_VISIBLE_DEVICES": entry})
    assert v.gpus == []
    assert v.problem == (f"CUDA_VISIBLE_DEVICES={entry!r}: GPU 0 (NVIDIA A100-SXM4-80GB) is in "
                         "MIG mode: name one of its MIG instances by UUID")


# --------------------------------------------------------------------------- CUDA_VISIBLE_DEVICES


def test_unset_means_every_gpu_in_pci_order() -> None:
    assert indices({}) == (list(range(8)), None)


def test_indices_keep_their_order() -> None:
    v = visible_gpus(A100X8, {"CUDA_VISIBLE_DEVICES": "3,1"})
    assert [g.index for g in v.gpus] == [3, 1]
    assert [g.uuid for g in v.gpus] == [A100X8_UUIDS[3], A100X8_UUIDS[1]]
    assert v.problem is None
    assert v.gpus[0].label == "GPU 3 (NVIDIA A100-SXM4-80GB)"


def test_spaces_around_entries_are_ignored() -> None:
    assert indices({"CUDA_VISIBLE_DEVICES": " 5, 6 "}) == ([5, 6], None)


def test_the_process_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    assert [g.index for g in visible_gpus(A100X8).gpus] == [7]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert len(visible_gpus(A100X8).gpus) == 8


@pytest.mark.parametrize("entry", [A100X8_UUIDS[3], "GPU-000a1803", "GPU-000a1803-1c2d"])
def test_a_gpu_uuid_or_a_unique_prefix_selects_it(entry: str) -> None:
    assert indices({"CUDA_VISIBLE_DEVICES": entry}) == ([3], None)


def test_uuids_and_indices_mix() -> None:
    assert indices({"CUDA_VISIBLE_DEVICES": f"{A100X8_UUIDS[6]},0"}) == ([6, 0], None)


def test_an_ambiguous_uuid_prefix_is_a_problem() -> None:
    assert indices({"CUDA_VISIBLE_DEVICES": "GPU-"}) == (
        [], "CUDA_VISIBLE_DEVICES='GPU-': 'GPU-' matches several devices (see nvidia-smi -L); "
            "later entries ignored")


def test_an_unknown_uuid_is_a_problem() -> None:
    assert indices({"CUDA_VISIBLE_DEVICES": "2,GPU-ffff"}) == (
        [2], "CUDA_VISIBLE_DEVICES='2,GPU-ffff': 'GPU-ffff' matches no device "
             "(see nvidia-smi -L); later entries ignored")


def test_cuda_stops_at_the_first_entry_that_names_no_gpu() -> None:
    assert indices({"CUDA_VISIBLE_DEVICES": "1,9,2"}) == (
        [1], "CUDA_VISIBLE_DEVICES='1,9,2': there is no GPU 9 (8 found); later entries ignored")


def test_the_first_index_past_the_end() -> None:
    gpus, problem = indices({"CUDA_VISIBLE_DEVICES": "8"})
    assert gpus == [] and problem is not None and "there is no GPU 8 (8 found)" in problem


def test_a_gpu_listed_twice_is_a_problem() -> None:
    assert indices({"CUDA_VISIBLE_DEVICES": "2,2"}) == (
        [2], "CUDA_VISIBLE_DEVICES='2,2': '2' is listed twice")
    gpus, problem = indices({"CUDA_VISIBLE_DEVICES": f"4,{A100X8_UUIDS[4]}"})
    assert gpus == [4] and problem is not None and "is listed twice" in problem


@pytest.mark.parametrize("raw", ["", "-1", "NoDevFiles"])
def test_hidden_on_purpose_means_no_gpu(raw: str) -> None:
    assert indices({"CUDA_VISIBLE_DEVICES": raw}) == (
        [], f"CUDA_VISIBLE_DEVICES={raw!r}: no GPU is visible (hidden on purpose)")


def test_labels() -> None:
    assert [g.label for g in A100X8.gpus[:2]] == [f"GPU 0 ({A100_NAME})", f"GPU 1 ({A100_NAME})"]
