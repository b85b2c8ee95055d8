"""The memory and quantization checks before loading: real config.json files of the models
the profiles suggest, checkpoints of their real tensor sizes (sparse files: a safetensors
header, then a hole), and NVML readings recorded on the real cards
(tests/support/fake_nvml.py), read through deepseekd.engine.gpus as on a GPU box."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest

from deepseekd.config import EngineSettings, load_settings
from deepseekd.engine import preflight as pf
from deepseekd.engine.gpus import Gpu, read_nvml
from deepseekd.engine.preflight import GIB, PreflightError
from deepseekd.profiles import PROFILES
from tests.support import fake_nvml
from tests.support.fake_nvml import BOXES, Box, Card

CONFIGS = Path(__file__).parent / "model_configs"
MIB = 1024 ** 2


def gpus_of(box: Box) -> list[Gpu]:
    reading = read_nvml(fake_nvml.FakeNvml(box))
    assert reading is not None and reading.error is None
    return list(reading.gpus)


def card(c: Card) -> Gpu:
    return gpus_of(Box("580.95.05", 13000, (c,)))[0]


RTX4090 = card(fake_nvml.RTX4090)
A100_80 = card(fake_nvml.A100_80)
RTX4080 = card(fake_nvml.RTX4080)
V100 = card(fake_nvml.V100)


def qwen2_tensors(cfg: dict) -> dict[str, list[int]]:
    """Every tensor of a Qwen2 / Llama checkpoint with its shape."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * (cfg.get("head_dim") or h // cfg["num_attention_heads"])
    bias = cfg["model_type"] == "qwen2"
    out = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
    if not cfg.get("tie_word_embeddings"):
        out["lm_head.weight"] = [v, h]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out.update({p + "self_attn.q_proj.weight": [h, h], p + "self_attn.k_proj.weight": [kv, h],
                    p + "self_attn.v_proj.weight": [kv, h], p + "self_attn.o_proj.weight": [h, h],
                    p + "mlp.gate_proj.weight": [i, h], p + "mlp.up_proj.weight": [i, h],
                    p + "mlp.down_proj.weight": [h, i], p + "input_layernorm.weight": [h],
                    p + "post_attention_layernorm.weight": [h]})
        if bias:
            out.update({p + "self_attn.q_proj.bias": [h], p + "self_attn.k_proj.bias": [kv],
                        p + "self_attn.v_proj.bias": [kv]})
    return out


def write_checkpoint(folder: Path, cfg: dict, tensors: dict[str, list[int]],
                     dtype: str = "BF16", nbytes: int = 2) -> Path:
    """config.json plus one safetensors file whose data region is a hole of the real size."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = nbytes
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    with (folder / "model.safetensors").open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)  # sparse: no disk space used
    return folder


def real_model(tmp_path: Path, name: str) -> Path:
    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    return write_checkpoint(tmp_path / name, cfg, qwen2_tensors(cfg))


def engine(**kw: object) -> EngineSettings:
    return EngineSettings(**kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the estimate


def test_weights_and_kv_of_r1_distill_qwen_7b(tmp_path: Path) -> None:
    shape = pf.read_model(real_model(tmp_path, "deepseek-r1-distill-qwen-7b"))
    # The published checkpoint: 7.62 B parameters in bfloat16, 15.23 GB in two shards.
    assert shape.tensor_bytes == pytest.approx(15.23e9, rel=0.002)
    p = pf.plan(shape, engine(dtype="bfloat16", max_model_len=16384, max_num_seqs=32), reserve=0)
    assert p.kv_per_token == 28 * 4 * 128 * 2 * 2  # layers × kv heads × head dim × K,V × bf16
    assert p.requests == 4 and p.kv_required == 4 * 16384 * 57344
    fp8 = pf.plan(shape, engine(dtype="bfloat16", quantization="fp8"), reserve=0)
    # Linear weights at one byte each; the two 152064 × 3584 embedding matrices (and the
    # norms and biases, under 1 MB) stay 16-bit.
    kept = shape.tensor_bytes - shape.linear_bytes
    assert 0 < kept - 2 * 152064 * 3584 * 2 < 1e6
    assert fp8.weights == shape.linear_bytes // 2 + kept
    f32 = pf.plan(shape, engine(dtype="float32"), reserve=0)
    assert f32.weights == 2 * shape.tensor_bytes and f32.kv_per_token == 2 * p.kv_per_token


def test_mla_kv_cache_of_deepseek_v3(tmp_path: Path) -> None:
    cfg = json.loads((CONFIGS / "deepseek-v3.json").read_text())
    # The FP8 checkpoint as published: 163 shards, 688.6 GB; one hole of that size here.
    folder = write_checkpoint(tmp_path / "v3", cfg, {"w": [688_600_000_000]}, "F8_E4M3", 1)
    shape = pf.read_model(folder)
    assert shape.mla_dim == 512 + 64 and shape.prequantized == "fp8"
    p = pf.plan(shape, engine(max_model_len=32768), reserve=pf.GPU_RESERVE_BYTES)
    assert p.kv_per_token == 61 * 576 * 2  # one latent per layer, not 128 K and V heads
    assert p.weights == 688_600_000_000  # served as stored
    with pytest.raises(PreflightError) as info:
        pf.check_gpu_fit(p, A100_80, 0.9)
    msg = str(info.value)
    assert "does not fit" in msg and "weights 641.3 GiB" in msg and "72.0 GiB" in msg


GPU_PROFILES = sorted(n for n, p in PROFILES.items() if p.gpus)


def test_every_gpu_profile_has_a_recorded_box() -> None:
    assert set(GPU_PROFILES) <= set(BOXES)


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_each_gpu_profile_fits_its_box(tmp_path: Path, name: str) -> None:
    """The profile's model, on the box it is sized for (as NVML reads it), passes preflight
    with the profile's own settings, on as many GPUs as the profile says."""
    profile = PROFILES[name]
    settings = load_settings(None, env={"DEEPSEEKD_ENGINE__PROFILE": name,
                                        "DEEPSEEKD_DATA_DIR": str(tmp_path)})
    gpus = gpus_of(BOXES[name])
    assert len(gpus) == profile.gpus
    assert gpus[0].total / GIB == pytest.approx(profile.gpu_memory_gib, abs=0.01)
    folder = real_model(tmp_path, settings.engine.model)
    result = pf.preflight(settings.engine, folder, "cuda", gpus)
    assert result.tensor_parallel_size == profile.gpus
    assert all(line.startswith("fits ") for line in result.notes[: profile.gpus])
    assert len([n for n in result.notes if n.startswith("fits ")]) == profile.gpus


def test_a_model_too_big_for_the_card_is_refused_with_the_numbers(tmp_path: Path) -> None:
    shape = pf.read_model(real_model(tmp_path, "deepseek-r1-distill-qwen-7b"))
    p = pf.plan(shape, engine(dtype="bfloat16", max_model_len=16384, max_num_seqs=32),
                reserve=pf.GPU_RESERVE_BYTES)
    with pytest.raises(PreflightError) as info:
        pf.check_gpu_fit(p, RTX4080, 0.9)
    msg = str(info.value)
    assert msg.startswith("engine.model does not fit: needs weights 14.2 GiB + KV cache 3.5 GiB")
    assert "(4 × 16384 tokens × 56.0 KiB/token)" in msg
    assert "the engine may use 14.4 GiB (0.9 of GPU 0 (NVIDIA GeForce RTX 4080), 16.0 GiB total" in msg
    assert "the KV cache would hold 0 tokens" in msg
    # The same model with FP8 weights fits that card.
    fp8 = pf.plan(shape, engine(dtype="bfloat16", max_model_len=16384, max_num_seqs=32,
                                quantization="fp8"), reserve=pf.GPU_RESERVE_BYTES)
    assert pf.check_gpu_fit(fp8, RTX4080, 0.9).startswith("fits ")


def test_a_busy_gpu_is_refused(tmp_path: Path) -> None:
    shape = pf.read_model(real_model(tmp_path, "deepseek-r1-distill-qwen-7b"))
    p = pf.plan(shape, engine(dtype="bfloat16"), reserve=pf.GPU_RESERVE_BYTES)
    busy = dataclasses.replace(RTX4090, free=12 * GIB)
    with pytest.raises(PreflightError) as info:
        pf.check_gpu_fit(p, busy, 0.9)
    assert str(info.value).startswith(
        "engine.gpu_memory_utilization: 0.9 of GPU 0 (NVIDIA GeForce RTX 4090) is 21.6 GiB, "
        "and vLLM's CUDA context takes about 0.5 GiB before it measures, but only 12.0 GiB "
        "of 24.0 GiB is free (other processes hold 12.0 GiB; see nvidia-smi)")
    assert pf.check_gpu_fit(p, busy, 0.9, free=False).startswith("fits ")  # capacity only


def test_a_desktop_gpu_with_2_gib_in_use_is_refused_before_vllm_would_fail() -> None:
    """NVML's free memory is read before any CUDA context exists; vLLM measures after it
    created one (~0.5 GiB). A 4090 driving a desktop (2.1 GiB in use) has 21.9 GiB free:
    more than 0.9 × 24 GiB = 21.6 GiB, but not once vLLM's context is there."""
    (desktop,) = gpus_of(BOXES["rtx4090-desktop"])
    assert desktop.free > int(desktop.total * 0.9)  # the old check passed it
    with pytest.raises(PreflightError) as info:
        pf.check_gpu_free(desktop, 0.9)
    assert "lower gpu_memory_utilization to at most 0.89" in str(info.value)
    assert pf.check_gpu_free(desktop, 0.89).startswith("GPU 0 (NVIDIA GeForce RTX 4090): 21.9")
    (idle,) = gpus_of(BOXES["rtx4090"])
    assert pf.check_gpu_free(idle, 0.9)


# --------------------------------------------------------------------------- quantization


def test_fp8_needs_a_gpu(tmp_path: Path) -> None:
    shape = pf.read_model(real_model(tmp_path, "deepseek-r1-distill-qwen-7b"))
    with pytest.raises(PreflightError) as info:
        pf.check_quantization("fp8", "cpu", None, shape)
    assert str(info.value).startswith("engine.quantization: 'fp8' needs an NVIDIA GPU")
    with pytest.raises(PreflightError) as info:
        pf.check_quantization("fp8", "cuda", V100.capability, shape)
    assert "compute capability 7.5 or newer in vLLM 0.32; this GPU has 7.0" in str(info.value)
    # compressed-tensors runs from 7.0 (CompressedTensorsConfig.get_min_capability() == 70)
    ct = dataclasses.replace(shape, prequantized="compressed-tensors")
    assert pf.check_quantization("compressed-tensors", "cuda", (7, 0), ct) is None
    with pytest.raises(PreflightError, match="capability 7.0 or newer"):
        pf.check_quantization("compressed-tensors", "cuda", (6, 0), ct)
    assert "weight-only" in (pf.check_quantization("fp8", "cuda", (8, 0), shape) or "")
    assert pf.check_quantization("fp8", "cuda", (8, 9), shape) is None
    assert pf.check_quantization("none", "cpu", None, shape) is None


def test_awq_needs_an_awq_checkpoint(tmp_path: Path) -> None:
    plain = pf.read_model(real_model(tmp_path, "deepseek-r1-distill-qwen-7b"))
    with pytest.raises(PreflightError) as info:
        pf.check_quantization("awq", "cuda", (8, 9), plain)
    assert "needs a checkpoint quantized with awq" in str(info.value)
    cfg = json.loads((CONFIGS / "deepseek-r1-distill-qwen-7b.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    awq = pf.read_model(write_checkpoint(tmp_path / "awq", cfg, {"w": [1024]}, "I32", 4))
    assert pf.check_quantization("awq", "cuda", (8, 9), awq) is None
    assert pf.check_quantization("awq", "cpu", None, awq) is None  # vLLM CPU runs AWQ


# --------------------------------------------------------------------------- the CPU box


def smollm2(tmp_path: Path) -> Path:
    cfg = json.loads((CONFIGS / "smollm2-135m-instruct.json").read_text())
    return write_checkpoint(tmp_path / "smollm2", cfg, qwen2_tensors(cfg))


def test_cpu_kv_cache_and_ram(tmp_path: Path) -> None:
    shape = pf.read_model(smollm2(tmp_path))
    p = pf.plan(shape, engine(max_model_len=0, max_num_seqs=64), reserve=pf.CPU_RESERVE_BYTES)
    assert p.max_model_len == 8192  # 0 takes the model's own
    assert p.kv_per_token == 30 * 3 * 64 * 2 * 2
    assert pf.check_cpu_fit(p, 2, 8 * GIB).startswith("fits in RAM: weights 0.3 GiB")
    long = pf.plan(shape, engine(max_model_len=65536), reserve=pf.CPU_RESERVE_BYTES)
    with pytest.raises(PreflightError) as info:
        pf.check_cpu_fit(long, 2, 8 * GIB)
    assert str(info.value).startswith(
        "engine.kv_cache_gib: 2 GiB holds 93206 tokens, but 4 requests at full context "
        "need 5.6 GiB (4 × 65536 tokens × 22.5 KiB/token)")
    with pytest.raises(PreflightError) as info:
        pf.check_cpu_fit(p, 2, 2 * GIB)
    assert str(info.value).startswith(
        "engine.model does not fit in RAM: weights 0.3 GiB + kv_cache_gib 2 GiB + reserve "
        "0.5 GiB = 2.8 GiB, but 2.0 GiB is available")


def test_auto_kv_cache_is_sized_from_the_model_and_the_ram(tmp_path: Path) -> None:
    shape = pf.read_model(smollm2(tmp_path))
    p = pf.plan(shape, engine(max_model_len=4096, max_num_seqs=64), reserve=pf.CPU_RESERVE_BYTES)
    # 16 sequences × 4096 tokens × 22.5 KiB = 1.4 GiB, rounded up to whole GiB
    assert pf.auto_kv_cache_gib(p, 64, 20 * GIB) == 2
    assert pf.auto_kv_cache_gib(p, 2, 20 * GIB) == 1  # two sequences need only 0.2 GiB
    long = pf.plan(shape, engine(max_model_len=65536), reserve=pf.CPU_RESERVE_BYTES)
    assert pf.auto_kv_cache_gib(long, 64, 20 * GIB) == 5  # capped: a quarter of the free RAM
    assert pf.auto_kv_cache_gib(long, 64, 1 * GIB) == 1  # never below 1 GiB
    assert pf.resolve_kv_cache_gib(engine(kv_cache_gib=3), tmp_path) == 3  # set: kept as is


def test_preflight_on_this_box(tmp_path: Path) -> None:
    folder = smollm2(tmp_path)
    result = pf.preflight(engine(max_model_len=2048, kv_cache_gib=1), folder, "cpu")
    assert result.notes[0].startswith("fits in RAM") and result.kv_cache_gib == 1
    auto = pf.preflight(engine(max_model_len=2048, kv_cache_gib=0), folder, "cpu")
    assert auto.kv_cache_gib == pf.resolve_kv_cache_gib(engine(max_model_len=2048), folder)
    with pytest.raises(PreflightError, match="'fp8' needs an NVIDIA GPU"):
        pf.preflight(engine(quantization="fp8"), folder, "cpu")


def test_unreadable_config_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(PreflightError, match="config.json is unreadable"):
        pf.read_model(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(PreflightError, match="lacks num_hidden_layers"):
        pf.read_model(tmp_path)
