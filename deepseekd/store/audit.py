"""The audit log: append-only, hash-chained with a keyed hash, in the same database.

Each event holds who did what to what, when, from where, and how it ended; for inference
also the model, token counts and HMACs of prompt and answer, never the content. ``hash`` is
HMAC-SHA256(audit key, prev_hash ‖ canonical row), so a change, deletion or reordering of
rows breaks the chain, and forging a new chain needs the audit key, which only exists
wrapped by the master key. Appends are serialised on the one-row ``audit_head`` table.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from deepseekd.store.db import Database
from deepseekd.store.schema import AuditEvent, AuditHead

_EVENTS = AuditEvent.__table__
_HEAD = AuditHead.__table__
# Built once: constructing a statement costs more than running it on SQLite.
_READ_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update()
_INSERT_EVENT = insert(_EVENTS)
_INSERT_HEAD = insert(_HEAD)
_MOVE_HEAD = (update(_HEAD).where(_HEAD.c.id == 1)
              .values(seq=bindparam("new_seq"), hash=bindparam("new_hash")))

log = logging.getLogger("deepseekd.audit")

GENESIS = "0" * 64
CHAIN_FIELDS = ("id", "at", "actor", "actor_id", "role", "action", "target", "outcome",
                "request_id", "client", "model", "prompt_tokens", "completion_tokens",
                "prompt_hmac", "answer_hmac", "detail")


class AuditUnavailable(Exception):
    """The event could not be written: the caller must fail closed."""


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


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events: int
    head_id: int
    head_hash: str
    first_bad_id: int | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.events, "head_id": self.head_id,
                "head_hash": self.head_hash, "first_bad_id": self.first_bad_id,
                "reason": self.reason}


def _canonical(row: dict[str, Any]) -> bytes:
    return json.dumps({k: row[k] for k in CHAIN_FIELDS}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(key: bytes, prev_hash: str, row: dict[str, Any]) -> str:
    return hmac.new(key, prev_hash.encode() + b"\n" + _canonical(row), hashlib.sha256).hexdigest()


class AuditLog:
    def __init__(self, db: Database, key_provider: Callable[[], bytes],
                 clock: Callable[[], float]) -> None:
        self._db = db
        self._key = key_provider
        self._now = clock
        self.failures = 0
        self.on_failure: Callable[[], None] = lambda: None

    def content_hmac(self, text: str) -> str:
        """A keyed hash of content: proves later what was said, without storing it."""
        return hmac.new(self._key(), text.encode("utf-8"), hashlib.sha256).hexdigest()

    async def append_in(self, s: AsyncSession, ev: Event) -> int:
        """Append inside the caller's write transaction; returns the event id."""
        return await s.run_sync(self.append_sync, ev)

    def append_sync(self, s: Session, ev: Event) -> int:
        """``append_in`` for synchronous code (``Database.run_write`` jobs). Plain Core
        statements: this runs for every request."""
        c = s.connection()  # Core on the session's connection: no ORM layer per statement
        head = c.execute(_READ_HEAD).first()
        prev_id, prev_hash = (head.seq, head.hash) if head else (0, GENESIS)
        row: dict[str, Any] = {
            "id": prev_id + 1, "at": round(self._now(), 6), "actor": ev.actor,
            "actor_id": ev.actor_id, "role": ev.role, "action": ev.action,
            "target": ev.target, "outcome": ev.outcome, "request_id": ev.request_id,
            "client": ev.client, "model": ev.model, "prompt_tokens": ev.prompt_tokens,
            "completion_tokens": ev.completion_tokens, "prompt_hmac": ev.prompt_hmac,
            "answer_hmac": ev.answer_hmac,
            "detail": (ev.detail or (json.dumps(ev.extra, sort_keys=True) if ev.extra else None)),
        }
        if row["detail"] is not None:
            row["detail"] = row["detail"][:512]
        digest = chain_hash(self._key(), prev_hash, row)
        c.execute(_INSERT_EVENT, {**row, "prev_hash": prev_hash, "hash": digest})
        if head is None:
            c.execute(_INSERT_HEAD, {"id": 1, "seq": row["id"], "hash": digest})
        else:
            c.execute(_MOVE_HEAD, {"new_seq": row["id"], "new_hash": digest})
        return int(row["id"])

    async def append(self, ev: Event) -> int:
        """Append in a transaction of its own; raises AuditUnavailable (fail closed)."""
        try:
            return await self._db.run_write(lambda s: self.append_sync(s, ev))
        except Exception as exc:
            self.record_failure(exc, ev.action)
            raise AuditUnavailable(str(exc)) from exc

    def record_failure(self, exc: BaseException, action: str) -> None:
        self.failures += 1
        self.on_failure()
        log.error("audit write failed", extra={"action": action, "error": type(exc).__name__})

    async def head(self) -> tuple[int, str]:
        async with self._db.read() as s:
            head = (await s.execute(select(AuditHead).where(AuditHead.id == 1))).scalar_one_or_none()
        return (head.seq, head.hash) if head else (0, GENESIS)

    async def verify(self, batch: int = 5000) -> VerifyResult:
        """Walk the chain; the first event that does not fit is named."""
        key = self._key()
        expected_id, prev_hash, count = 1, GENESIS, 0
        async for ev in self._iter(batch):
            row = {k: getattr(ev, k) for k in CHAIN_FIELDS}
            if ev.id != expected_id:
                return VerifyResult(False, count, expected_id - 1, prev_hash, expected_id,
                                    f"event {expected_id} is missing (found {ev.id} next): "
                                    "deleted or reordered")
            if ev.prev_hash != prev_hash:
                return VerifyResult(False, count, ev.id - 1, prev_hash, ev.id,
                                    f"event {ev.id} does not follow event {ev.id - 1}: "
                                    "an earlier event was changed, deleted or reordered")
            if not hmac.compare_digest(chain_hash(key, prev_hash, row), ev.hash):
                return VerifyResult(False, count, ev.id - 1, prev_hash, ev.id,
                                    f"event {ev.id} was changed after it was written")
            prev_hash, expected_id, count = ev.hash, expected_id + 1, count + 1
        head_id, head_hash = await self.head()
        if (head_id, head_hash) != (expected_id - 1, prev_hash):
            return VerifyResult(False, count, expected_id - 1, prev_hash, expected_id,
                                f"the chain ends at event {expected_id - 1} but the head "
                                f"records event {head_id}: events were cut from the end")
        return VerifyResult(True, count, head_id, head_hash)

    async def _iter(self, batch: int) -> AsyncIterator[AuditEvent]:
        after = 0
        while True:
            async with self._db.read() as s:
                rows = (await s.execute(select(AuditEvent).where(AuditEvent.id > after)
                                        .order_by(AuditEvent.id).limit(batch))).scalars().all()
            if not rows:
                return
            for ev in rows:
                yield ev
            after = rows[-1].id

    async def query(self, *, since: float | None = None, until: float | None = None,
                    actor: str | None = None, action: str | None = None,
                    after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        q = select(AuditEvent).where(AuditEvent.id > after_id)
        if since is not None:
            q = q.where(AuditEvent.at >= since)
        if until is not None:
            q = q.where(AuditEvent.at < until)
        if actor is not None:
            q = q.where(AuditEvent.actor == actor)
        if action is not None:
            q = q.where(AuditEvent.action == action)
        async with self._db.read() as s:
            rows = (await s.execute(q.order_by(AuditEvent.id).limit(limit))).scalars().all()
        return [{**{k: getattr(r, k) for k in CHAIN_FIELDS}, "prev_hash": r.prev_hash,
                 "hash": r.hash} for r in rows]
