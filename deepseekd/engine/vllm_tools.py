"""vLLM's tool parsers: which exist, and the one the served model needs (see tools.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.tool_parsers import ToolParserManager

from deepseekd.engine.tools import (
    AUTO,
    NONE,
    TOOL_MARKERS,
    ToolCallSplitter,
    tool_parser_candidates,
)

log = logging.getLogger("deepseekd.engine.tools")


class ToolParserError(ValueError):
    """The tool parser setting does not fit the installed vLLM or the model."""


def available_tool_parsers() -> list[str]:
    return ToolParserManager.list_registered()


def check_tool_parser_name(setting: str) -> None:
    """Refuse, before any model loads, a parser name this vLLM does not have."""
    if setting in (AUTO, NONE):
        return
    names = available_tool_parsers()
    if setting not in names:
        raise ToolParserError(
            f"engine.tool_parser: vLLM has no tool parser {setting!r}; use 'auto', 'none' or "
            f"one of: {', '.join(names)}"
        )


def _request(tools: Sequence[dict[str, Any]]) -> Any:
    return ChatCompletionRequest(  # type: ignore[call-arg]
        model="deepseekd",
        messages=[{"role": "user", "content": ""}],
        tools=list(tools),  # type: ignore[arg-type]
        tool_choice="auto",
    )


class ToolParsing:
    """The tool parser picked for the served model; makes one splitter per choice."""

    def __init__(self, name: str, parser_cls: Any, tokenizer: Any) -> None:
        self.name = name
        self._cls = parser_cls
        self._tokenizer = tokenizer
        probe = parser_cls(tokenizer).adjust_request(_request([_PROBE_TOOL]))
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        special = set(getattr(tokenizer, "all_special_tokens", ()) or ()) | {
            t.content for t in added.values() if getattr(t, "special", False)
        }
        self.keeps_special_tokens = not getattr(probe, "skip_special_tokens", True) or bool(
            special & set(TOOL_MARKERS)
        )
        """The parser reads markers that are special tokens: the output must keep them (the
        parser says so, or this tokenizer marks a tool-call marker special where the
        model's own tokenizer would not)."""

    def splitter(self, tools: Sequence[dict[str, Any]], *, stream: bool) -> ToolCallSplitter:
        # Parsers keep streaming state: a fresh one per choice.
        request = _request(tools)
        parser = self._cls(self._tokenizer, request.tools)
        return ToolCallSplitter(parser, parser.adjust_request(request), stream=stream)


_PROBE_TOOL = {"type": "function", "function": {"name": "probe", "parameters": {}}}


def load_tool_parsing(setting: str, tokenizer: Any) -> ToolParsing | None:
    """Pick and build the parser for a loaded model (None: no calls read from free text)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    auto = setting == AUTO and hasattr(tokenizer, "get_vocab")
    vocabulary = tokenizer.get_vocab() if auto else {}  # only auto looks at it
    names = tool_parser_candidates(
        setting, template if isinstance(template, str) else str(template), vocabulary
    )
    for name in names:
        check_tool_parser_name(name)
        try:
            parsing = ToolParsing(name, ToolParserManager.get_tool_parser(name), tokenizer)
        except Exception as exc:  # parsers raise when the model's tokenizer lacks their markers
            if setting != AUTO:
                raise ToolParserError(
                    f"engine.tool_parser: {name!r} does not fit this model: {exc}"
                ) from None
            log.warning(
                "tool parser does not fit; trying the next",
                extra={"tool_parser": name, "error": str(exc)[:200]},
            )
            continue
        log.info(
            "tool parser",
            extra={"tool_parser": name, "picked": "auto" if setting == AUTO else "setting"},
        )
        return parsing
    log.info("tool parser", extra={"tool_parser": None, "picked": setting})
    return None
