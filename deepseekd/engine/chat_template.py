"""The base model's chat template, outside vLLM: token counts of fine-tuning examples.

transformers takes seconds to import; only callers that count tokens pay for it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def token_counter(model_dir: Path) -> Callable[[list[dict[str, str]]], int]:
    """Tokens of one conversation as the model sees it (its chat template applied)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))

    def count(messages: list[dict[str, str]]) -> int:
        return len(tok.apply_chat_template(messages, tokenize=True, return_dict=False))

    return count
