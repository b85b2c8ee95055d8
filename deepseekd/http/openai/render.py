"""OpenAI response objects built from a run's steps and results: chat completions and text
completions, their stream chunks, usage and logprobs; and a reasoning model's reasoning, as
DeepSeek's API (``reasoning_content``) and vLLM's server (``reasoning``) both name it."""

from __future__ import annotations

from typing import Any

from deepseekd.engine.types import ChoiceDelta, TokenLogprob
from deepseekd.services.chat import Accumulated, ChatRun


def usage(
    prompt_tokens: int,
    completion_tokens: int,
    reasoning_tokens: int | None = None,
    cached_tokens: int | None = None,
) -> dict[str, Any]:
    """OpenAI's usage object; a reasoning model's adds completion_tokens_details. Prompt
    tokens found in the prefix cache are reported as OpenAI (prompt_tokens_details) and
    DeepSeek (prompt_cache_hit_tokens / prompt_cache_miss_tokens) name them."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
        out["prompt_cache_hit_tokens"] = cached_tokens
        out["prompt_cache_miss_tokens"] = prompt_tokens - cached_tokens
    if reasoning_tokens is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return out


def run_usage(run: ChatRun) -> dict[str, Any]:
    return usage(run.prompt_tokens, run.completion_tokens, run.reasoning_tokens, run.cached_tokens)


def tool_call_deltas(d: ChoiceDelta) -> list[dict[str, Any]]:
    """A delta's tool calls as OpenAI streams them: id, type and name with a call's first
    piece, then more of its arguments."""
    out = []
    for tc in d.tool_calls:
        item: dict[str, Any] = {"index": tc.index}
        function: dict[str, Any] = {"arguments": tc.arguments}
        if tc.id:
            item["id"] = tc.id
            item["type"] = "function"
        if tc.name:
            function["name"] = tc.name
        item["function"] = function
        out.append(item)
    return out


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_logprobs(items: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": _bytes(t.token),
                "top_logprobs": [
                    {"token": tok, "logprob": lp, "bytes": _bytes(tok)} for tok, lp in t.top
                ],
            }
            for t in items
        ]
    }


def completion_logprobs(items: list[TokenLogprob], start_offset: int) -> dict[str, Any]:
    offsets, pos = [], start_offset
    for t in items:
        offsets.append(pos)
        pos += len(t.token)
    return {
        "tokens": [t.token for t in items],
        "token_logprobs": [t.logprob for t in items],
        "top_logprobs": [dict(t.top) for t in items],
        "text_offset": offsets,
    }


class ChatRender:
    """``chat.completion`` objects and ``chat.completion.chunk`` events of one run."""

    def __init__(self, run: ChatRun) -> None:
        self.run = run
        self._show = run.show_reasoning
        self._parser = run.reasoning_parser
        # A role that may not see the reasoning gets no logprobs either: they would spell
        # the reasoning out token by token.
        self._logprobs = run.prepared.options.logprobs is not None and (
            self._show or self._parser is None
        )

    def envelope(
        self, choices: list[dict[str, Any]], obj: str = "chat.completion.chunk"
    ) -> dict[str, Any]:
        run = self.run
        return {
            "id": run.id,
            "object": obj,
            "created": run.created,
            "model": run.prepared.model,
            "choices": choices,
        }

    def head(self, i: int) -> dict[str, Any] | None:
        return {
            "index": i,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }

    def chunk(self, d: ChoiceDelta, _so_far: Accumulated) -> dict[str, Any]:
        reasoning = (
            {"reasoning_content": d.reasoning, "reasoning": d.reasoning}
            if self._show and d.reasoning
            else {}
        )
        calls = {"tool_calls": tool_call_deltas(d)} if d.tool_calls else {}
        return {
            "index": d.index,
            "delta": {**({"content": d.text} if d.text else {}), **reasoning, **calls},
            "logprobs": chat_logprobs(d.logprobs) if self._logprobs else None,
            "finish_reason": d.finish_reason,
        }

    def body(self) -> dict[str, Any]:
        choices = []
        for i, a in enumerate(self.run.acc):
            message: dict[str, Any] = {"role": "assistant", "content": a.text}
            if a.tool_calls:
                message["content"] = a.text or None
                message["tool_calls"] = a.tool_calls
            if self._parser is not None and self._show:
                message["reasoning_content"] = message["reasoning"] = a.reasoning or None
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": chat_logprobs(a.logprobs) if self._logprobs else None,
                    "finish_reason": a.finish_reason,
                }
            )
        out = self.envelope(choices, obj="chat.completion")
        out["usage"] = run_usage(self.run)
        return out


class CompletionRender:
    """``text_completion`` objects and events of one run."""

    def __init__(self, run: ChatRun) -> None:
        self.run = run
        self._logprobs = run.prepared.options.logprobs is not None

    def envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        run = self.run
        return {
            "id": run.id,
            "object": "text_completion",
            "created": run.created,
            "model": run.prepared.model,
            "choices": choices,
        }

    def head(self, i: int) -> dict[str, Any] | None:
        return None

    def chunk(self, d: ChoiceDelta, so_far: Accumulated) -> dict[str, Any]:
        # ``so_far`` already holds this delta: its text starts where the rest ended.
        start = len(so_far.text) - len(d.text)
        return {
            "index": d.index,
            "text": d.text,
            "logprobs": completion_logprobs(d.logprobs, start) if self._logprobs else None,
            "finish_reason": d.finish_reason,
        }

    def body(self) -> dict[str, Any]:
        out = self.envelope(
            [
                {
                    "index": i,
                    "text": a.text,
                    "logprobs": completion_logprobs(a.logprobs, 0) if self._logprobs else None,
                    "finish_reason": a.finish_reason,
                }
                for i, a in enumerate(self.run.acc)
            ]
        )
        out["usage"] = usage(
            self.run.prompt_tokens, self.run.completion_tokens, None, self.run.cached_tokens
        )
        return out
