"""Build a tiny LoRA adapter with peft for a local model folder (run as a script, so torch
stays out of the test process): ``python make_lora.py BASE_DIR OUT_DIR [RANK]``.

``init_lora_weights=False`` gives both LoRA matrices random non-zero values, so the adapter
visibly changes greedy output (peft's default B = 0 would change nothing).
"""

from __future__ import annotations

import sys


def main() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base, out = sys.argv[1], sys.argv[2]
    rank = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32,
                                                 local_files_only=True)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, init_lora_weights=False,
                        target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
    get_peft_model(model, config).save_pretrained(out, safe_serialization=True)


if __name__ == "__main__":
    main()
