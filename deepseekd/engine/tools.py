"""Tool calls in free text (``tool_choice: "auto"``): which vLLM tool parser a model needs,
and a per-choice splitter that moves the calls out of the answer as deltas arrive.

The parsing is vLLM's (``vllm/tool_parsers``): a streamed answer is fed to the parser's
``extract_tool_calls_streaming`` delta by delta, as vLLM's own server does, and what the
parser parsed but has not streamed yet is flushed at the end; a whole answer goes to
``extract_tool_calls``. vLLM is not imported here: the parser and its request object come
from ``vllm_tools.py``; the splitter uses the members in ``ToolFormat``.

``auto`` picks the parser from the chat template's own tool-call markers: DeepSeek-V3/R1
(``<｜tool▁calls▁begin｜>``) get deepseek_v3 (deepseek_v31 for the V3.1 template, which
drops V3's fenced JSON), Hermes-style templates (``<tool_call>``, Qwen2.5 and Qwen3) get
hermes, Llama 3 (``<|python_tag|>``) gets llama3_json. Then from the vocabulary, for the
distills: R1-Distill-Qwen ships R1's template but a Qwen tokenizer without DeepSeek's
markers (vLLM's deepseek_v3 parser refuses it), and its Qwen vocabulary has
``<tool_call>``: hermes; R1-Distill-Llama's Llama vocabulary has ``<|python_tag|>``:
llama3_json. The first candidate the tokenizer can serve is used; none fits: none.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Sequence
from typing import Any, Protocol

from deepseekd.engine.types import ChoiceDelta, ToolCallDelta

log = logging.getLogger(__name__)

AUTO = "auto"
NONE = "none"
DEEPSEEK_CALLS = "<｜tool▁calls▁begin｜>"
HERMES_CALL = "<tool_call>"
LLAMA3_TAG = "<|python_tag|>"
TOOL_MARKERS = (
    DEEPSEEK_CALLS,
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁sep｜>",
    HERMES_CALL,
    "</tool_call>",
    LLAMA3_TAG,
)
"""Tool-call markers the parsers read: when a tokenizer makes one a special token, the
output must keep special tokens or the parser never sees the call."""


def pick_tool_parser(setting: str, chat_template: str) -> str | None:
    """The parser name for ``[engine] tool_parser`` (see the module doc for ``auto``)."""
    if setting == NONE:
        return None
    if setting != AUTO:
        return setting
    if DEEPSEEK_CALLS in chat_template:
        return "deepseek_v3" if "```json" in chat_template else "deepseek_v31"
    if HERMES_CALL in chat_template:
        return "hermes"
    if LLAMA3_TAG in chat_template:
        return "llama3_json"
    return None


def tool_parser_candidates(
    setting: str, chat_template: str, vocabulary: Container[str]
) -> list[str]:
    """The parsers to try, in order (see the module doc for ``auto``)."""
    if setting != AUTO:
        return [] if setting == NONE else [setting]
    out = []
    first = pick_tool_parser(AUTO, chat_template)
    if first is not None:
        out.append(first)
    if HERMES_CALL in vocabulary:
        out.append("hermes")
    if LLAMA3_TAG in vocabulary:
        out.append("llama3_json")
    return list(dict.fromkeys(out))


class ToolFormat(Protocol):
    """The members of a vLLM ``ToolParser`` the splitter uses."""

    def extract_tool_calls(self, model_output: str, request: Any) -> Any: ...

    def extract_tool_calls_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Sequence[int],
        current_token_ids: Sequence[int],
        delta_token_ids: Sequence[int],
        request: Any,
    ) -> Any: ...

    def get_remaining_unstreamed_args(self) -> str: ...


class ToolCallSplitter:
    """Moves one choice's tool calls out of its text: ``text`` keeps the content, the calls
    go to ``tool_calls`` (the first delta of a call carries its id and name)."""

    def __init__(self, parser: ToolFormat, request: Any, *, stream: bool) -> None:
        self._parser = parser
        self._request = request
        self._stream = stream
        self._text = ""
        self._ids: list[int] = []
        self._calls = 0  # calls begun so far
        self._last_call = -1

    @property
    def calls(self) -> int:
        return self._calls

    def split(self, d: ChoiceDelta) -> None:
        if not self._stream:
            self._text += d.text
            self._ids.extend(d.token_ids)
            d.text = ""
            if d.finish_reason is not None:
                self._whole(d)
            return
        prev_text, prev_ids = self._text, list(self._ids)
        self._text += d.text
        self._ids.extend(d.token_ids)
        try:
            msg = self._parser.extract_tool_calls_streaming(
                prev_text, self._text, d.text, prev_ids, self._ids, d.token_ids, self._request
            )
        except Exception:  # a parser failing on odd output must not lose the answer
            log.warning("tool parser failed on a delta; passing it through as text")
            return
        d.text = (msg.content or "") if msg is not None else ""
        for tc in (msg.tool_calls or []) if msg is not None else []:
            self._add(
                d,
                tc.index,
                tc.id,
                tc.function.name if tc.function else None,
                (tc.function.arguments or "") if tc.function else "",
            )
        if d.finish_reason is not None and self._calls:
            rest = self._parser.get_remaining_unstreamed_args()
            if rest:
                d.tool_calls.append(ToolCallDelta(self._last_call, arguments=rest))

    def _whole(self, d: ChoiceDelta) -> None:
        try:
            info = self._parser.extract_tool_calls(self._text, self._request)
        except Exception:
            log.warning("tool parser failed on an answer; returning it as text")
            d.text = self._text
            return
        if not info.tools_called:
            d.text = self._text
            return
        d.text = info.content or ""
        for i, call in enumerate(info.tool_calls):
            self._add(d, i, call.id, call.function.name, call.function.arguments or "")

    def _add(
        self, d: ChoiceDelta, index: int, call_id: str | None, name: str | None, arguments: str
    ) -> None:
        if index > self._last_call:
            self._last_call = index
            self._calls = index + 1
        d.tool_calls.append(ToolCallDelta(index, call_id, name, arguments))
