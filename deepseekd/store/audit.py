"""The audit log's rows: the append-only event table and its one-row head.

Appends are serialised on the head row (read FOR UPDATE), so two appends can never take the
same id; the chain's hashes are computed by the caller (services/audit.py) with the audit
key, which never reaches this room.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from deepseekd.domain.audit import CHAIN_FIELDS, GENESIS
from deepseekd.store.dialect import table
from deepseekd.store.schema import AuditEvent, AuditHead

_EVENTS = table(AuditEvent)
_HEAD = table(AuditHead)
# Built once: constructing a statement costs more than running it on SQLite.
_LOCK_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update()
_INSERT_EVENT = insert(_EVENTS)
_INSERT_HEAD = insert(_HEAD)
_MOVE_HEAD = (
    update(_HEAD)
    .where(_HEAD.c.id == 1)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)


def lock_head(s: Session) -> tuple[int, str] | None:
    """The chain's last id and hash, locked for this transaction; None for an empty log."""
    head = s.connection().execute(_LOCK_HEAD).first()
    return (int(head.seq), str(head.hash)) if head is not None else None


def append(s: Session, row: dict[str, Any], prev_hash: str, digest: str, *, first: bool) -> None:
    """Store event ``row`` (its chained fields) and move the head to it."""
    c = s.connection()  # Core on the session's connection: no ORM layer per statement
    c.execute(_INSERT_EVENT, {**row, "prev_hash": prev_hash, "hash": digest})
    if first:
        c.execute(_INSERT_HEAD, {"id": 1, "seq": row["id"], "hash": digest})
    else:
        c.execute(_MOVE_HEAD, {"new_seq": row["id"], "new_hash": digest})


def head(s: Session) -> tuple[int, str]:
    row = s.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one_or_none()
    return (row.seq, row.hash) if row else (0, GENESIS)


def events_after(s: Session, after: int, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` events after id ``after``, in order, as dicts (chained fields plus
    prev_hash and hash)."""
    rows = (
        s.execute(
            select(AuditEvent).where(AuditEvent.id > after).order_by(AuditEvent.id).limit(limit)
        )
        .scalars()
        .all()
    )
    return [_as_dict(r) for r in rows]


def query(
    s: Session,
    *,
    since: float | None,
    until: float | None,
    actor: str | None,
    action: str | None,
    after_id: int,
    limit: int,
    outcome: str | None = None,
    before_id: int | None = None,
    newest_first: bool = False,
) -> list[dict[str, Any]]:
    """Events after ``after_id`` (and before ``before_id``) that match every filter given:
    the oldest first, or with ``newest_first`` the newest first."""
    q = select(AuditEvent).where(AuditEvent.id > after_id)
    if before_id is not None:
        q = q.where(AuditEvent.id < before_id)
    if since is not None:
        q = q.where(AuditEvent.at >= since)
    if until is not None:
        q = q.where(AuditEvent.at < until)
    if actor is not None:
        q = q.where(AuditEvent.actor == actor)
    if action is not None:
        q = q.where(AuditEvent.action == action)
    if outcome is not None:
        q = q.where(AuditEvent.outcome == outcome)
    order = AuditEvent.id.desc() if newest_first else AuditEvent.id
    rows = s.execute(q.order_by(order).limit(limit)).scalars().all()
    return [_as_dict(r) for r in rows]


def _as_dict(r: AuditEvent) -> dict[str, Any]:
    return {**{k: getattr(r, k) for k in CHAIN_FIELDS}, "prev_hash": r.prev_hash, "hash": r.hash}
