"""The audit event, and the fields the hash chain covers.

Each event holds who did what to what, when, from where, and how it ended; for inference
also the model, token counts and HMACs of prompt and answer, never the content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from deepseekd.domain.identity import Identity, cli_actor

GENESIS = "0" * 64
CHAIN_FIELDS = (
    "id",
    "at",
    "actor",
    "actor_id",
    "role",
    "action",
    "target",
    "outcome",
    "request_id",
    "client",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "prompt_hmac",
    "answer_hmac",
    "detail",
)
DETAIL_CHARS = 512


@dataclass
class Event:
    action: str
    outcome: str = "ok"
    actor: str | None = None
    actor_id: int | None = None
    role: str | None = None
    target: str | None = None
    request_id: str | None = None
    client: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_hmac: str | None = None
    answer_hmac: str | None = None
    detail: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def by(cls, who: Identity | None, action: str, **fields: Any) -> Event:
        """An event done by ``who``; ``None`` is the command line (named by its OS user)."""
        if who is None:
            return cls(action=action, actor=cli_actor(), role="cli", **fields)
        fields.setdefault("client", who.client)
        return cls(action=action, actor=who.name, actor_id=who.user_id, role=who.role, **fields)

    @classmethod
    def by_service(cls, action: str, **fields: Any) -> Event:
        """An event the daemon does on its own (automatic rotation, start-up checks)."""
        return cls(action=action, role="service", **fields)

    def row(self, event_id: int, at: float) -> dict[str, Any]:
        """The chained fields of this event as event ``event_id`` at time ``at``."""
        detail = self.detail or (json.dumps(self.extra, sort_keys=True) if self.extra else None)
        return {
            "id": event_id,
            "at": round(at, 6),
            "actor": self.actor,
            "actor_id": self.actor_id,
            "role": self.role,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "request_id": self.request_id,
            "client": self.client,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "prompt_hmac": self.prompt_hmac,
            "answer_hmac": self.answer_hmac,
            "detail": detail[:DETAIL_CHARS] if detail is not None else None,
        }


def canonical(row: dict[str, Any]) -> bytes:
    """The bytes a chain hash covers: the chained fields as sorted, compact JSON."""
    return json.dumps(
        {k: row[k] for k in CHAIN_FIELDS}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events: int
    head_id: int
    head_hash: str
    first_bad_id: int | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head_id": self.head_id,
            "head_hash": self.head_hash,
            "first_bad_id": self.first_bad_id,
            "reason": self.reason,
        }
