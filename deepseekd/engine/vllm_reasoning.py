"""vLLM's reasoning parsers: which exist, and the one the served model needs."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vllm.reasoning import ReasoningParserManager

from deepseekd.engine.reasoning import AUTO, NONE, Reasoning, ReasoningError, pick_parser

log = logging.getLogger("deepseekd.engine.reasoning")


def available_parsers() -> list[str]:
    return ReasoningParserManager.list_registered()


def check_parser_name(setting: str) -> None:
    """Refuse, before any model loads, a parser name this vLLM does not have."""
    if setting in (AUTO, NONE):
        return
    names = available_parsers()
    if setting not in names:
        raise ReasoningError(
            f"engine.reasoning_parser: vLLM has no reasoning parser {setting!r}; use 'auto', "
            f"'none' or one of: {', '.join(names)}"
        )


def reasoning_parser_name(setting: str, model_path: Path) -> str | None:
    """The parser the model at ``model_path`` needs, before any engine is built (the engine
    is told, so guided decoding constrains the answer, not the reasoning): read off its
    tokenizer and config.json as ``load_reasoning`` does."""
    if setting == NONE:
        return None
    if setting != AUTO:
        return setting
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    try:
        config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    return pick_parser(
        setting,
        config.get("architectures") or (),
        getattr(tokenizer, "chat_template", None) or "",
        tokenizer.get_vocab(),
    )


def load_reasoning(setting: str, tokenizer: Any, architectures: Sequence[str]) -> Reasoning | None:
    """Pick and build the parser for a loaded model (None: the model does not reason)."""
    name = pick_parser(
        setting,
        architectures,
        getattr(tokenizer, "chat_template", None) or "",
        tokenizer.get_vocab(),
    )
    if name is None:
        return None
    check_parser_name(name)
    try:
        parser = ReasoningParserManager.get_reasoning_parser(name)(tokenizer)
    except Exception as exc:  # vLLM raises RuntimeError/ValueError when the tags are missing
        raise ReasoningError(
            f"engine.reasoning_parser: {name!r} does not fit this model: {exc}"
        ) from None
    end = parser.reasoning_end_str
    end_id = parser.vocab.get(end) if end else None

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    log.info(
        "reasoning parser",
        extra={"reasoning_parser": name, "picked": "auto" if setting == AUTO else "setting"},
    )
    return Reasoning(name, parser, end_id, count_tokens)
