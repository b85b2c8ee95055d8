"""OpenAI response objects built from engine steps."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from deepseekd.engine.types import ChoiceDelta, TokenLogprob


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def usage(prompt_tokens: int, completion_tokens: int,
          reasoning_tokens: int | None = None) -> dict[str, Any]:
    """OpenAI's usage object; a reasoning model's adds completion_tokens_details."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if reasoning_tokens is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
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
        "top_logprobs": [{tok: lp for tok, lp in t.top} for t in items],
        "text_offset": offsets,
    }


@dataclass
class Accumulated:
    """A choice's full output, gathered from deltas."""

    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    reasoning: str = ""
    reasoning_tokens: int = 0

    def add(self, d: ChoiceDelta) -> None:
        self.text += d.text
        self.tokens += d.token_count
        self.logprobs.extend(d.logprobs)
        if d.reasoning_tokens is not None:
            self.reasoning += d.reasoning
            self.reasoning_tokens = d.reasoning_tokens
        if d.finish_reason is not None:
            self.finish_reason = d.finish_reason
