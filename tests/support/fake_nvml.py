"""A stand-in for ``pynvml`` that answers from NVML tables of real boxes.

Each box is what NVML reports on that hardware: driver version, the CUDA version the
driver supports (NVML's encoding: 13000 = 13.0), and per GPU the name, memory total (as
nvidia-smi prints it for that card: 24564 MiB for an RTX 4090, 81559 MiB for an H100) and
free on an idle card (typical: drivers keep a few hundred MiB), and the compute
capability; the UUIDs are made up in NVML's format. None of it was read off a GPU in this
project (no GPU has been available); the totals and capabilities are NVIDIA's. The functions are the ones deepseekd calls, with nvidia-ml-py's
names and return shapes; a function listed in ``fail`` raises NVMLError as a broken or
old driver does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

MIB = 1024**2


@dataclass(frozen=True)
class Card:
    name: str
    total_mib: int
    free_mib: int
    capability: tuple[int, int]
    uuid: str
    mig: bool = False
    """MIG mode enabled on this card."""
    instances: tuple[Card, ...] = ()
    """Its MIG instances (each with a MIG- UUID)."""
    temperature: int = 34
    power_mw: int = 28_000
    utilization: int = 0


@dataclass(frozen=True)
class Box:
    driver: str
    cuda: int
    cards: tuple[Card, ...]
    fail: frozenset[str] = field(default_factory=frozenset)
    """NVML functions that raise (e.g. nvmlDeviceGetTemperatureV on an old driver)."""


def _uuid(n: int, tag: str = "GPU") -> str:
    return f"{tag}-{n:08x}-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


RTX4090 = Card("NVIDIA GeForce RTX 4090", 24564, 24080, (8, 9), _uuid(0x4090))
A100_40 = Card("NVIDIA A100-SXM4-40GB", 40960, 40420, (8, 0), _uuid(0xA140))
A100_80 = Card("NVIDIA A100-SXM4-80GB", 81920, 81230, (8, 0), _uuid(0xA180))
H100 = Card("NVIDIA H100 80GB HBM3", 81559, 80994, (9, 0), _uuid(0x100))
H200 = Card("NVIDIA H200", 143771, 143193, (9, 0), _uuid(0x200))
V100 = Card("Tesla V100-SXM2-32GB", 32768, 32300, (7, 0), _uuid(0x100C))
P100 = Card("Tesla P100-PCIE-16GB", 16384, 16100, (6, 0), _uuid(0x6000))
RTX4080 = Card("NVIDIA GeForce RTX 4080", 16376, 15900, (8, 9), _uuid(0x4080))

BOXES: dict[str, Box] = {
    "rtx4090": Box("580.95.05", 13000, (RTX4090,)),
    "a100-40gb": Box("580.95.05", 13000, (A100_40,)),
    "a100": Box("580.95.05", 13000, (A100_80,)),
    "h100": Box("580.95.05", 13000, (H100,)),
    "h200": Box("580.95.05", 13000, (H200,)),
    "a100x8": Box(
        "580.95.05",
        13000,
        tuple(
            Card(A100_80.name, 81920, 81230, (8, 0), _uuid(0xA1800 + i)) for i in range(8)
        ),
    ),
    # The 550 branch (CUDA 12.4): installs, then fails when a CUDA 13 engine starts.
    "rtx4090-driver550": Box("550.127.05", 12040, (RTX4090,)),
    # A workstation 4090 that also drives the desktop: 2.1 GiB held by Xorg and a browser.
    "rtx4090-desktop": Box(
        "580.95.05", 13000, (Card(RTX4090.name, 24564, 22400, (8, 9), RTX4090.uuid),)
    ),
    # An A100 split in MIG mode: one 3g.40gb instance and one 2g.20gb.
    "a100-mig": Box(
        "580.95.05",
        13000,
        (
            Card(
                A100_80.name, 81920, 81230, (8, 0), A100_80.uuid, mig=True,
                instances=(
                    Card("NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40192, 40140, (8, 0),
                         _uuid(0x3040, "MIG")),
                    Card("NVIDIA A100-SXM4-80GB MIG 2g.20gb", 19968, 19940, (8, 0),
                         _uuid(0x2020, "MIG")),
                ),
            ),
        ),
    ),
}


class NVMLError(Exception):
    pass


class NVMLError_FunctionNotFound(NVMLError):
    pass


class FakeNvml:
    """``pynvml`` as far as deepseekd uses it, answering from one recorded box."""

    NVMLError = NVMLError
    NVMLError_FunctionNotFound = NVMLError_FunctionNotFound
    NVML_TEMPERATURE_GPU = 0
    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(self, box: Box, *, init_error: bool = False) -> None:
        self.box = box
        self.init_error = init_error
        self.inits = 0
        self.shutdowns = 0

    def _call(self, name: str) -> None:
        if name in self.box.fail:
            raise (NVMLError_FunctionNotFound if name.endswith("V") else NVMLError)(name)

    def nvmlInit(self) -> None:
        if self.init_error:
            raise NVMLError("Driver Not Loaded")
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._call("nvmlSystemGetDriverVersion")
        return self.box.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._call("nvmlSystemGetCudaDriverVersion")
        return self.box.cuda

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return len(self.box.cards)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> Card:
        self._call("nvmlDeviceGetHandleByIndex")
        if i >= len(self.box.cards):
            raise NVMLError("Invalid Argument")
        return self.box.cards[i]

    def nvmlDeviceGetUUID(self, h: Card) -> str:
        return h.uuid

    def nvmlDeviceGetName(self, h: Card) -> bytes:
        return h.name.encode()  # old bindings return bytes; deepseekd takes both

    def nvmlDeviceGetMemoryInfo(self, h: Card) -> Any:
        self._call("nvmlDeviceGetMemoryInfo")
        total, free = h.total_mib * MIB, h.free_mib * MIB
        return SimpleNamespace(total=total, free=free, used=total - free)

    def nvmlDeviceGetCudaComputeCapability(self, h: Card) -> tuple[int, int]:
        return h.capability

    def nvmlDeviceGetMigMode(self, h: Card) -> list[int]:
        if not h.mig and h.capability < (8, 0):
            raise NVMLError("Not Supported")
        return [int(h.mig), int(h.mig)]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: Card) -> int:
        return 7 if h.mig else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: Card, j: int) -> Card:
        if j >= len(h.instances):
            raise NVMLError("Not Found")
        return h.instances[j]

    def nvmlDeviceGetUtilizationRates(self, h: Card) -> Any:
        return SimpleNamespace(gpu=h.utilization, memory=0)

    def nvmlDeviceGetTemperatureV(self, h: Card, sensor: int) -> int:
        self._call("nvmlDeviceGetTemperatureV")
        return h.temperature

    def nvmlDeviceGetTemperature(self, h: Card, sensor: int) -> int:
        self._call("nvmlDeviceGetTemperature")
        return h.temperature

    def nvmlDeviceGetPowerUsage(self, h: Card) -> int:
        return h.power_mw
