"""Break-glass rows: start, end, expiry and the auditor's review. What a session may do is
decided in services/breakglass.py; this room only reads and writes the table."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from deepseekd.domain.audit import CHAIN_FIELDS
from deepseekd.store.schema import AuditEvent, BreakGlass

FIELDS = (
    "id",
    "user_id",
    "actor",
    "reason_code",
    "reason",
    "scope",
    "target",
    "started_at",
    "expires_at",
    "ended_at",
    "end_reason",
    "start_event",
    "reviewed_at",
    "reviewed_by",
    "review_comment",
)


def as_dict(row: BreakGlass) -> dict[str, Any]:
    return {k: getattr(row, k) for k in FIELDS}


def insert(s: Session, **values: Any) -> BreakGlass:
    row = BreakGlass(**values)
    s.add(row)
    s.flush()  # the id, for the audit event written in the same transaction
    return row


def get(s: Session, bg_id: int, *, lock: bool = False) -> BreakGlass | None:
    q = select(BreakGlass).where(BreakGlass.id == bg_id)
    return s.execute(q.with_for_update() if lock else q).scalar_one_or_none()


def active(s: Session, now: float) -> list[dict[str, Any]]:
    """Sessions not ended and not past their time."""
    rows = s.execute(
        select(BreakGlass)
        .where(BreakGlass.ended_at.is_(None), BreakGlass.expires_at > now)
        .order_by(BreakGlass.id)
    ).scalars()
    return [as_dict(r) for r in rows]


def of_user(s: Session, user_id: int | None, actor: str, limit: int = 50) -> list[dict[str, Any]]:
    q = select(BreakGlass)
    q = q.where(BreakGlass.user_id == user_id) if user_id else q.where(BreakGlass.actor == actor)
    rows = s.execute(q.order_by(BreakGlass.id.desc()).limit(limit)).scalars()
    return [as_dict(r) for r in rows]


def due_to_expire(s: Session, now: float) -> list[BreakGlass]:
    """Past their time but not yet marked ended (locked: one daemon marks each)."""
    q = (
        select(BreakGlass)
        .where(BreakGlass.ended_at.is_(None), BreakGlass.expires_at <= now)
        .order_by(BreakGlass.id)
        .with_for_update()
    )
    return list(s.execute(q).scalars())


def end(s: Session, bg_id: int, at: float, reason: str) -> None:
    s.execute(
        update(BreakGlass)
        .where(BreakGlass.id == bg_id, BreakGlass.ended_at.is_(None))
        .values(ended_at=at, end_reason=reason)
    )


def for_review(s: Session, *, unreviewed_only: bool, limit: int = 200) -> list[dict[str, Any]]:
    """Unreviewed oldest first (the queue); with all, newest first."""
    q = select(BreakGlass)
    if unreviewed_only:
        q = q.where(BreakGlass.reviewed_at.is_(None)).order_by(BreakGlass.id)
    else:
        q = q.order_by(BreakGlass.id.desc())
    return [as_dict(r) for r in s.execute(q.limit(limit)).scalars()]


def counts(s: Session, now: float, overdue_before: float) -> tuple[int, int]:
    """(active now, ended before ``overdue_before`` and still unreviewed)."""
    rows = s.execute(
        select(BreakGlass.ended_at, BreakGlass.expires_at).where(BreakGlass.reviewed_at.is_(None))
    ).all()
    active_n = sum(1 for ended, expires in rows if ended is None and expires > now)
    overdue = sum(1 for ended, expires in rows if min(ended or expires, expires) <= overdue_before)
    return active_n, overdue


def events_of(s: Session, bg: dict[str, Any], limit: int = 500) -> list[dict[str, Any]]:
    """The audit events of break-glass ``bg``: those naming it (start, reads, quota lifts,
    stop or expiry, review) and everything its holder did while it was active."""
    tagged = f'{{"breakglass": {int(bg["id"])}'
    end = bg["ended_at"] if bg["ended_at"] is not None else bg["expires_at"]
    q = (
        select(AuditEvent)
        .where(
            or_(
                AuditEvent.detail == tagged + "}",
                AuditEvent.detail.like(tagged + ",%"),
                (AuditEvent.actor == bg["actor"])
                & (AuditEvent.at >= bg["started_at"])
                & (AuditEvent.at <= end),
            )
        )
        .order_by(AuditEvent.id)
        .limit(limit)
    )
    return [{k: getattr(r, k) for k in CHAIN_FIELDS} for r in s.execute(q).scalars()]
