"""[engine] profile: fills the engine settings nobody set; the file and the environment win."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepseekd.config import ConfigError, EngineSettings, Settings, load_settings
from deepseekd.profiles import PROFILE_NAMES, PROFILES

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "deepseekd.toml"


def load(tmp_path: Path, text: str = "", **env: str) -> Settings:
    path = tmp_path / "deepseekd.toml"
    path.write_text(text)
    return load_settings(path, env={f"DEEPSEEKD_{k.upper()}": v for k, v in env.items()})


def test_a_profile_sets_the_engine_defaults(tmp_path: Path) -> None:
    s = load(tmp_path, '[engine]\nprofile = "rtx4090"\n')
    assert (s.engine.model, s.engine.device, s.engine.dtype, s.engine.quantization) == (
        "deepseek-r1-distill-qwen-7b", "cuda", "bfloat16", "none")
    assert (s.engine.max_model_len, s.engine.max_num_seqs, s.engine.gpu_memory_utilization) == (
        16384, 32, 0.9)
    assert s.engine.enable_prefix_caching is True  # not the profile's business: default
    a100 = load(tmp_path, '[engine]\nprofile = "a100"\n')
    assert (a100.engine.model, a100.engine.quantization, a100.engine.max_model_len) == (
        "deepseek-r1-distill-qwen-32b", "fp8", 32768)


def test_explicit_settings_beat_the_profile(tmp_path: Path) -> None:
    s = load(tmp_path, '[engine]\nprofile = "rtx4090"\nmax_model_len = 8192\n'
             'quantization = "fp8"\n', engine__model="my-finetune", engine__max_num_seqs="8")
    assert s.engine.max_model_len == 8192 and s.engine.quantization == "fp8"  # the file
    assert s.engine.model == "my-finetune" and s.engine.max_num_seqs == 8  # the environment
    assert s.engine.dtype == "bfloat16"  # the profile, for what nobody set
    # A value equal to the plain default still counts as chosen.
    same = load(tmp_path, '[engine]\nprofile = "a100"\nquantization = "none"\n')
    assert same.engine.quantization == "none"


def test_the_environment_picks_the_profile(tmp_path: Path) -> None:
    s = load(tmp_path, "[server]\nport = 9000\n", engine__profile="a100-40gb")
    assert s.engine.model == "deepseek-r1-distill-qwen-14b" and s.engine.quantization == "fp8"


def test_the_shipped_file_leaves_the_profile_room(tmp_path: Path) -> None:
    """The shipped config comments the profile-governed settings out, so choosing a profile
    there (or by environment) takes effect."""
    s = load_settings(SHIPPED, env={"DEEPSEEKD_ENGINE__PROFILE": "rtx4090"})
    assert s.engine.model == "deepseek-r1-distill-qwen-7b" and s.engine.max_model_len == 16384
    assert load_settings(SHIPPED, env={}).engine == EngineSettings()


def test_which_settings_were_explicit(tmp_path: Path) -> None:
    s = load(tmp_path, '[engine]\ndtype = "float16"\n[server]\nport = 9001\n',
             quota__daily_requests="10")
    assert s.explicit == ("engine.dtype", "quota.daily_requests", "server.port")
    assert s.is_explicit("engine.dtype") and not s.is_explicit("engine.model")
    assert s == load(tmp_path, '[engine]\ndtype = "float16"\n[server]\nport = 9001\n',
                     quota__daily_requests="10")
    with pytest.raises(ConfigError, match="explicit: unknown setting"):
        load(tmp_path, 'explicit = ["engine.dtype"]\n')
    with pytest.raises(ConfigError, match="DEEPSEEKD_EXPLICIT: no such setting"):
        load(tmp_path, "", explicit="x")


def test_an_unknown_profile_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, '[engine]\nprofile = "b200"\n')
    assert str(info.value) == ("engine.profile: expected one of 'none', 'cpu-small', "
                               "'rtx4090', 'a100-40gb', 'a100', 'h100', 'h200', 'a100x8', "
                               "got 'b200'")


def test_the_multi_gpu_and_hopper_profiles(tmp_path: Path) -> None:
    x8 = load(tmp_path, '[engine]\nprofile = "a100x8"\n')
    assert (x8.engine.model, x8.engine.quantization, x8.engine.tensor_parallel_size,
            x8.engine.max_num_seqs) == ("deepseek-r1-distill-llama-70b", "fp8", 8, 128)
    assert PROFILES["a100x8"].gpus == 8 and PROFILES["h200"].gpus == 1
    h200 = load(tmp_path, '[engine]\nprofile = "h200"\n')
    assert (h200.engine.model, h200.engine.tensor_parallel_size) == (
        "deepseek-r1-distill-llama-70b", 1)
    # An explicit size wins over the profile's, as for every engine setting.
    four = load(tmp_path, '[engine]\nprofile = "a100x8"\n', engine__tensor_parallel_size="4")
    assert four.engine.tensor_parallel_size == 4


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_every_profile_loads(tmp_path: Path, name: str) -> None:
    s = load(tmp_path, f'[engine]\nprofile = "{name}"\n')
    assert s.engine.profile == name
    for key, value in (PROFILES[name].engine.items() if name != "none" else ()):
        assert getattr(s.engine, key) == value


def test_lora_limits_are_checked_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"lora.max_loras: at most lora.max_adapters \(2\)"):
        load(tmp_path, "[lora]\nmax_adapters = 2\nmax_loras = 4\n")
    with pytest.raises(ConfigError, match="lora.max_rank: expected one of 1, 8, 16"):
        load(tmp_path, "[lora]\nmax_rank = 12\n")
