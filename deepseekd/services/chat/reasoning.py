"""A reasoning model's answers: splitting the reasoning from the answer as it streams, who
may see it, and what history keeps of it (``[reasoning]`` settings).

A role outside ``return_to_roles`` gets neither the reasoning nor logprobs (they would spell
it out token by token, as vLLM's server also reasons); its history keeps at most an HMAC of
the reasoning: what a role may not see is never kept readable in its history (an export
would show it).
"""

from __future__ import annotations

from deepseekd.config import ReasoningSettings
from deepseekd.engine.types import Engine, GenerationStep, Splitter


class ReasoningSplits:
    """One splitter per choice of a request; splits each step's deltas in place."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._splitters: dict[int, Splitter | None] = {}

    def __call__(self, step: GenerationStep) -> None:
        for d in step.choices:
            if d.index not in self._splitters:
                self._splitters[d.index] = self._engine.reasoning_splitter()
            splitter = self._splitters[d.index]
            if splitter is not None:
                splitter.split(d)


class ReasoningPolicy:
    def __init__(self, cfg: ReasoningSettings) -> None:
        self._cfg = cfg

    def shown(self, role: str) -> bool:
        """Whether the caller's role receives the reasoning."""
        return role in self._cfg.return_to_roles

    def history_mode(self, role: str) -> str:
        """'store', 'hash' or 'drop': what the caller's history keeps of the reasoning."""
        mode = self._cfg.history
        return "hash" if mode == "store" and not self.shown(role) else mode
