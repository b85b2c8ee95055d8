"""The GPUs as NVML sees them, and which of them the engine will use.

NVML (nvidia-ml-py, ``pynvml``) reads the driver without creating a CUDA context, so it is
safe before vLLM is imported and costs milliseconds. Everything the daemon decides about
GPUs (the driver check, preflight per GPU, tensor parallel sizing) starts from one
:class:`NvmlReading`; the decisions are plain functions of it, unit-tested with readings
for real cards (``tests/support/fake_nvml.py``).

Which GPUs the engine uses follows CUDA's rules for ``CUDA_VISIBLE_DEVICES``: unset means
every GPU; each entry is an index, a GPU UUID (``GPU-…``, a unique prefix is enough) or a
MIG instance UUID (``MIG-…``); enumeration stops at the first entry that names no device.
Indices mean PCI bus order, NVML's order: the engine environment sets
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that CUDA (whose default is "fastest first") agrees.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    index: int
    """NVML index (PCI bus order); for a MIG instance, its parent GPU's index."""
    uuid: str
    name: str
    total: int
    free: int
    capability: tuple[int, int] | None
    mig: bool = False
    """A MIG instance (a slice of ``index``), not a whole GPU."""
    mig_enabled: bool = False
    """A whole GPU in MIG mode: CUDA can only use its instances, not the GPU itself."""

    @property
    def label(self) -> str:
        kind = f"MIG instance {self.uuid} of GPU {self.index}" if self.mig else f"GPU {self.index}"
        return f"{kind} ({self.name})"


@dataclass(frozen=True)
class NvmlReading:
    """One look at the driver. ``error`` set: NVML answered but could not be read."""

    driver_version: str = ""
    cuda_driver_version: int = 0
    """CUDA version the driver supports, as NVML encodes it: 13000 = 13.0, 12040 = 12.4."""
    gpus: tuple[Gpu, ...] = ()
    migs: tuple[Gpu, ...] = ()
    error: str | None = None

    @property
    def cuda_major(self) -> int:
        return self.cuda_driver_version // 1000

    @property
    def cuda_version(self) -> str:
        v = self.cuda_driver_version
        return f"{v // 1000}.{v % 1000 // 10}"

    def as_json(self) -> dict[str, Any]:
        return {
            "driver_version": self.driver_version,
            "cuda_driver_version": self.cuda_version if self.cuda_driver_version else None,
            "gpus": [_gpu_json(g) for g in self.gpus],
            "mig_instances": [_gpu_json(g) for g in self.migs],
            "error": self.error,
        }


def _gpu_json(g: Gpu) -> dict[str, Any]:
    return {
        "index": g.index,
        "uuid": g.uuid,
        "name": g.name,
        "memory_total_bytes": g.total,
        "memory_free_bytes": g.free,
        "compute_capability": f"{g.capability[0]}.{g.capability[1]}" if g.capability else None,
        "mig_enabled": g.mig_enabled,
    }


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_nvml(nvml: Any = None) -> NvmlReading | None:
    """Read the driver and every GPU; None when there is no NVIDIA driver (no library, or
    nvmlInit fails because no driver is loaded). ``nvml`` replaces ``pynvml`` in tests."""
    if nvml is None:
        try:
            import pynvml
        except ImportError:
            return None
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        log.debug("no NVML: %s", exc)
        return None
    try:
        return _read(nvml)
    except nvml.NVMLError as exc:
        return NvmlReading(error=f"NVML failed: {exc}")
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def _read(nv: Any) -> NvmlReading:
    driver = _text(nv.nvmlSystemGetDriverVersion())
    cuda = int(nv.nvmlSystemGetCudaDriverVersion())
    gpus: list[Gpu] = []
    migs: list[Gpu] = []
    for i in range(int(nv.nvmlDeviceGetCount())):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        mig_on = _mig_mode(nv, h)
        gpu = _device(nv, h, i, mig=False, mig_enabled=mig_on)
        gpus.append(gpu)
        if mig_on:
            migs.extend(_mig_instances(nv, h, gpu))
    return NvmlReading(driver, cuda, tuple(gpus), tuple(migs))


def _device(nv: Any, h: Any, index: int, *, mig: bool, mig_enabled: bool) -> Gpu:
    mem = nv.nvmlDeviceGetMemoryInfo(h)
    try:
        cap: tuple[int, int] | None = tuple(nv.nvmlDeviceGetCudaComputeCapability(h))
    except nv.NVMLError:
        cap = None
    return Gpu(
        index=index,
        uuid=_text(nv.nvmlDeviceGetUUID(h)),
        name=_text(nv.nvmlDeviceGetName(h)),
        total=int(mem.total),
        free=int(mem.free),
        capability=cap,
        mig=mig,
        mig_enabled=mig_enabled,
    )


def _mig_mode(nv: Any, h: Any) -> bool:
    try:
        current, _pending = nv.nvmlDeviceGetMigMode(h)
    except nv.NVMLError:  # not supported: not a MIG-capable card
        return False
    return bool(current == nv.NVML_DEVICE_MIG_ENABLE)


def _mig_instances(nv: Any, h: Any, parent: Gpu) -> list[Gpu]:
    out = []
    for j in range(int(nv.nvmlDeviceGetMaxMigDeviceCount(h))):
        try:
            mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
        except nv.NVMLError:  # an empty slot
            continue
        inst = _device(nv, mh, parent.index, mig=True, mig_enabled=False)
        # MIG instances report the parent's compute capability through the parent handle.
        out.append(Gpu(**{**inst.__dict__, "capability": inst.capability or parent.capability}))
    return out


# --------------------------------------------------------------------------- visibility


@dataclass(frozen=True)
class Visible:
    """The devices CUDA will number 0, 1, … for the engine, in that order."""

    gpus: list[Gpu] = field(default_factory=list)
    problem: str | None = None
    """Why an entry of CUDA_VISIBLE_DEVICES was not used (CUDA ignores it and every later
    entry), or why a GPU cannot be used (MIG mode)."""


def visible_gpus(reading: NvmlReading, env: Mapping[str, str] | None = None) -> Visible:
    """Map ``CUDA_VISIBLE_DEVICES`` onto the NVML reading the way CUDA does."""
    env = os.environ if env is None else env
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        usable = [g for g in reading.gpus if not g.mig_enabled]
        migged = [g for g in reading.gpus if g.mig_enabled]
        problem = None
        if migged:
            problem = (
                f"{', '.join(g.label for g in migged)} in MIG mode: CUDA uses a MIG "
                "instance only when CUDA_VISIBLE_DEVICES names its UUID (nvidia-smi -L)"
            )
        return Visible(usable, problem)
    chosen: list[Gpu] = []
    for entry in (e.strip() for e in raw.split(",")):
        gpu, problem = _resolve(reading, entry)
        if gpu is None:
            return Visible(chosen, f"CUDA_VISIBLE_DEVICES={raw!r}: {problem}")
        if gpu in chosen:
            return Visible(chosen, f"CUDA_VISIBLE_DEVICES={raw!r}: {entry!r} is listed twice")
        chosen.append(gpu)
        if gpu.mig:  # CUDA enumerates a single MIG instance per process
            break
    return Visible(chosen)


def _resolve(reading: NvmlReading, entry: str) -> tuple[Gpu | None, str]:
    if entry in ("", "-1", "NoDevFiles"):
        return None, "no GPU is visible (hidden on purpose)"
    if entry.isdigit():
        i = int(entry)
        if i >= len(reading.gpus):
            return None, f"there is no GPU {i} ({len(reading.gpus)} found); later entries ignored"
        gpu = reading.gpus[i]
        if gpu.mig_enabled:
            return None, f"{gpu.label} is in MIG mode: name one of its MIG instances by UUID"
        return gpu, ""
    pool = reading.migs if entry.startswith("MIG-") else reading.gpus
    matches = [g for g in pool if g.uuid.startswith(entry)]
    if len(matches) != 1:
        what = "matches no device" if not matches else "matches several devices"
        return None, f"{entry!r} {what} (see nvidia-smi -L); later entries ignored"
    if matches[0].mig_enabled:
        return None, f"{matches[0].label} is in MIG mode: name one of its MIG instances by UUID"
    return matches[0], ""
