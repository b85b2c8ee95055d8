"""Reasoning models: which vLLM reasoning parser a model needs, and a per-choice splitter that
separates ``<think>`` reasoning from the answer as deltas arrive.

The split itself is vLLM's: the splitter hands the parser's text-based ``extract_reasoning``
the reasoning text seen so far. Two things are added around it so that streaming and
non-streaming answers agree on every delta boundary:

* text that could be the beginning of a tag (``</thi``) is held back until the next delta
  shows whether it is one, so a tag split across deltas (vLLM holds text back for stop
  strings; a model may spell a tag with ordinary tokens) is still found;
* a stray start tag inside the reasoning is dropped, as vLLM's streaming path drops a lone
  ``<think>`` token (otherwise the text-based parser would restart the reasoning there).

Reasoning tokens are counted from token ids where the end tag is a token of its own (exact),
else by tokenizing the reasoning text. vLLM is imported lazily, inside functions: the
splitter works with any object that has the three members it uses; the parsers themselves
come from vLLM in ``vllm_reasoning.py``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from deepseekd.engine.types import ChoiceDelta

log = logging.getLogger(__name__)

AUTO = "auto"
NONE = "none"
THINK_START = "<think>"
THINK_END = "</think>"
R1 = "deepseek_r1"
V3 = "deepseek_v3"
# DeepSeek-V3 checkpoints whose template switches thinking on a `thinking` flag (V3.1 and
# later) want vLLM's deepseek_v3 parser, which splits only when that flag is set.
_V3_ARCHITECTURES = ("DeepseekV3ForCausalLM", "DeepseekV32ForCausalLM")
_THINKING_FLAG = re.compile(r"(?<![\w.])thinking(?!\w)")


class ReasoningError(ValueError):
    """The reasoning parser setting does not fit the installed vLLM or the model."""


class ReasoningFormat(Protocol):
    """The members of a vLLM ``ReasoningParser`` the splitter uses."""

    @property
    def reasoning_start_str(self) -> str | None: ...

    @property
    def reasoning_end_str(self) -> str | None: ...

    def extract_reasoning(self, model_output: str, request: Any) -> tuple[str | None, str | None]:
        """(reasoning, answer) of a whole output; either may be None."""


def _partial_tag(text: str, tags: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is a proper beginning of one of ``tags``."""
    best = 0
    for tag in tags:
        for k in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:k]):
                best = k
                break
    return best


class ReasoningSplitter:
    """Splits one choice's output into reasoning and answer, delta by delta.

    ``feed`` returns the new (reasoning, answer) text of one delta, ``finish`` what was held
    back; feeding the whole output at once gives the same result as feeding it in pieces.
    """

    def __init__(
        self, parser: ReasoningFormat, end_token_id: int | None, count_tokens: Callable[[str], int]
    ) -> None:
        self._parser = parser
        self._start = parser.reasoning_start_str or ""
        self._end = parser.reasoning_end_str or ""
        self._tags = tuple(t for t in (self._start, self._end) if t)
        self._end_id = end_token_id
        self._count = count_tokens
        self._buf = ""  # the output while still in reasoning, stray start tags removed
        self._reasoning = ""  # reasoning handed out so far
        self._answering = False
        self._tokens = 0
        self._end_at: int | None = None  # index of the end-tag token in the output
        self._text_count: int | None = None

    @property
    def reasoning_tokens(self) -> int:
        """Output tokens that belong to the reasoning, tags included."""
        if not self._end:
            return 0
        if self._end_at is not None:
            return self._end_at + 1
        if self._text_count is not None:
            return self._text_count
        return self._tokens  # still reasoning

    def feed(self, text: str, token_ids: Sequence[int]) -> tuple[str, str]:
        if self._answering:
            self._tokens += len(token_ids)
            return "", text
        if self._end_id is not None and self._end_at is None and self._end_id in token_ids:
            self._end_at = self._tokens + list(token_ids).index(self._end_id)
        self._tokens += len(token_ids)
        self._buf += text
        if self._start:
            while self._start in self._buf:
                self._buf = self._buf.replace(self._start, "")
        reasoning, answer = self._parser.extract_reasoning(self._buf, None)
        reasoning = reasoning or ""
        if answer is not None:
            return self._begin_answer(reasoning), answer
        ready = reasoning[: len(reasoning) - _partial_tag(reasoning, self._tags)]
        return self._hand_out(ready), ""

    def finish(self) -> tuple[str, str]:
        if self._answering:
            return "", ""
        reasoning, answer = self._parser.extract_reasoning(self._buf, None)
        if answer is not None:
            return self._begin_answer(reasoning or ""), answer
        if self._end and self._end in self._buf and self._end_at is None:
            self._text_count = min(self._tokens, self._count((reasoning or "") + self._end))
        return self._hand_out(reasoning or ""), ""

    def split(self, d: ChoiceDelta) -> None:
        """Split an engine delta in place: ``text`` keeps the answer, ``reasoning`` the rest."""
        reasoning, answer = self.feed(d.text, d.token_ids)
        if d.finish_reason is not None:
            more_reasoning, more_answer = self.finish()
            reasoning, answer = reasoning + more_reasoning, answer + more_answer
        d.text, d.reasoning, d.reasoning_tokens = answer, reasoning, self.reasoning_tokens

    def _hand_out(self, reasoning: str) -> str:
        new = reasoning[len(self._reasoning) :] if reasoning.startswith(self._reasoning) else ""
        if new:
            self._reasoning = reasoning
        return new

    def _begin_answer(self, reasoning: str) -> str:
        new = self._hand_out(reasoning)
        self._answering = True
        self._buf = ""
        if self._end_at is None and self._end:
            # The end tag came as text, not as its own token: count the reasoning's tokens.
            self._text_count = min(self._tokens, self._count(reasoning + self._end))
        return new


class Reasoning:
    """The reasoning parser picked for the served model; makes one splitter per choice."""

    def __init__(
        self,
        name: str,
        parser: ReasoningFormat,
        end_token_id: int | None,
        count_tokens: Callable[[str], int],
    ) -> None:
        self.name = name
        self._parser = parser
        self._end_id = end_token_id
        self._count = count_tokens

    def splitter(self) -> ReasoningSplitter:
        # vLLM's DeepSeek parsers keep no state in extract_reasoning: one instance serves all.
        return ReasoningSplitter(self._parser, self._end_id, self._count)


def _template_text(chat_template: object) -> str:
    if isinstance(chat_template, str):
        return chat_template
    if isinstance(chat_template, dict):
        return "\n".join(str(v) for v in chat_template.values())
    if isinstance(chat_template, (list, tuple)):  # [{"name": ..., "template": ...}, ...]
        return "\n".join(
            str(t.get("template", "")) if isinstance(t, dict) else str(t) for t in chat_template
        )
    return ""


def pick_parser(
    setting: str, architectures: Sequence[str], chat_template: object, vocab: Mapping[str, int]
) -> str | None:
    """The parser name for ``[engine] reasoning_parser``: an explicit name as given, None
    for "none", and for "auto" one read off the model: R1-style models (their chat template
    and tokenizer know ``<think>``/``</think>``: DeepSeek-R1 on the V3 architecture, its
    Qwen2 and Llama distills) get deepseek_r1; a DeepSeek-V3 template with a ``thinking``
    switch (V3.1) gets deepseek_v3."""
    if setting == NONE:
        return None
    if setting != AUTO:
        return setting
    template = _template_text(chat_template)
    if THINK_START not in vocab or THINK_END not in vocab:
        return None
    if THINK_START not in template and THINK_END not in template:
        return None
    if any(a in _V3_ARCHITECTURES for a in architectures) and _THINKING_FLAG.search(template):
        return V3
    return R1
