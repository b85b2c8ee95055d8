"""A reasoning model's answers over HTTP: who sees the reasoning, how it is rendered, and what
history keeps of it (``[reasoning]`` settings).

The reasoning goes out as ``reasoning_content`` (DeepSeek's API) and as ``reasoning`` (vLLM's
server), in messages and in stream deltas. A role outside ``return_to_roles`` gets neither,
and no logprobs either (they would spell out the reasoning token by token, as vLLM's server
also reasons); its history keeps at most an HMAC of the reasoning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from aiohttp import web

from deepseekd.api.middlewares import IDENTITY
from deepseekd.api.render import Accumulated
from deepseekd.engine.reasoning import ReasoningSplitter
from deepseekd.engine.types import ChoiceDelta, Engine, GenerationStep
from deepseekd.keys import SETTINGS

if TYPE_CHECKING:
    from deepseekd.api.inference import Prepared


class ReasoningSplits:
    """One splitter per choice of a request; splits each step's deltas in place."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._splitters: dict[int, ReasoningSplitter | None] = {}

    def __call__(self, step: GenerationStep) -> None:
        for d in step.choices:
            if d.index not in self._splitters:
                self._splitters[d.index] = self._engine.reasoning_splitter()
            splitter = self._splitters[d.index]
            if splitter is not None:
                splitter.split(d)


def shown(request: web.Request) -> bool:
    """Whether the caller's role receives the reasoning."""
    return request[IDENTITY].role in request.app[SETTINGS].reasoning.return_to_roles


def history_mode(request: web.Request) -> str:
    """'store', 'hash' or 'drop': what the caller's history keeps of the reasoning. What a
    role may not see is never kept readable in its history (an export would show it)."""
    mode = request.app[SETTINGS].reasoning.history
    return "hash" if mode == "store" and not shown(request) else mode


def delta_fields(d: ChoiceDelta, show: bool) -> dict[str, str]:
    if show and d.reasoning:
        return {"reasoning_content": d.reasoning, "reasoning": d.reasoning}
    return {}


def message_fields(a: Accumulated, parser: str | None, show: bool) -> dict[str, Any]:
    if parser is None or not show:
        return {}
    return {"reasoning_content": a.reasoning or None, "reasoning": a.reasoning or None}


def reasoning_tokens(acc: Sequence[Accumulated], parser: str | None) -> int | None:
    """Reasoning tokens of all choices (None for a model without reasoning)."""
    return sum(a.reasoning_tokens for a in acc) if parser is not None else None


def turn_fields(request: web.Request, acc: Sequence[Accumulated],
                prepared: "Prepared") -> dict[str, Any]:
    """The reasoning part of a history TurnRecord (nothing for a model without reasoning)."""
    if prepared.reasoning_parser is None:
        return {}
    return {"reasoning": acc[0].reasoning, "reasoning_tokens": sum(a.reasoning_tokens for a in acc),
            "reasoning_history": history_mode(request)}
