"""The engine's process environment: privacy switches, caches, CPU threads, KV cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepseekd.config import load_settings
from deepseekd.engine import environment


def env_for(tmp_path: Path, **engine: str) -> dict[str, str]:
    settings = load_settings(path=None, env={
        "DEEPSEEKD_DATA_DIR": str(tmp_path),
        **{f"DEEPSEEKD_ENGINE__{k.upper()}": v for k, v in engine.items()}})
    return environment.engine_environment(settings)


def test_nothing_leaves_the_box_and_the_compile_cache_is_ours(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    assert env["VLLM_NO_USAGE_STATS"] == env["VLLM_DO_NOT_TRACK"] == "1"
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert Path(env["VLLM_CACHE_ROOT"]).is_relative_to(tmp_path.resolve())


@pytest.mark.parametrize("cores, reserved", [(2, "0"), (4, "0"), (8, None), (64, None)])
def test_small_boxes_compute_on_every_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           cores: int, reserved: str | None) -> None:
    monkeypatch.setattr(environment, "_physical_cores", lambda: cores)
    env = env_for(tmp_path)
    assert env.get("VLLM_CPU_NUM_OF_RESERVED_CPU") == reserved
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env  # vLLM's own binding picks the cores


def test_explicit_threads_pin_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "_physical_cores", lambda: 2)
    env = env_for(tmp_path, cpu_threads="3")
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-2"
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in env


def test_kv_cache_size(tmp_path: Path) -> None:
    assert "VLLM_CPU_KVCACHE_SPACE" not in env_for(tmp_path)  # 0: sized at start (preflight)
    assert env_for(tmp_path, kv_cache_gib="3")["VLLM_CPU_KVCACHE_SPACE"] == "3"
