"""What the access review reads: the audit events of a period that it reports on, a page at
a time in id order; the last successful sign-in of each account before a time (one grouped
query, however far back); and the accounts with what the review needs of them.

Only reads; the review's own audit event is written by the service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, func, not_, or_, select
from sqlalchemy.orm import Session

from deepseekd.store.schema import ApiKey, AuditEvent, User


@dataclass(frozen=True)
class ReviewEvent:
    """The fields of an audit event the review uses (never its HMACs or detail)."""

    id: int
    at: float
    actor: str | None
    actor_id: int | None
    role: str | None
    action: str
    target: str | None
    outcome: str


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    role: str
    source: str
    disabled: bool
    created_at: float
    erased_at: float | None
    totp_enrolled: bool
    totp_last_step: int | None
    """The last TOTP step (30 s) accepted from the account, if any since its enrolment."""
    active_keys: int


def period_events(
    s: Session,
    *,
    since: float,
    until: float,
    after_id: int,
    limit: int,
    actions: Sequence[str],
    roles: Sequence[str],
    skip_families: Sequence[str],
) -> list[ReviewEvent]:
    """Up to ``limit`` events with ``since <= at < until`` after id ``after_id``, in id
    order: those whose action is one of ``actions``, and those done in one of ``roles``
    except the actions of ``skip_families`` (``inference`` skips ``inference`` and
    ``inference.*``)."""
    e = AuditEvent
    skipped = or_(*(or_(e.action == f, e.action.like(f + ".%")) for f in skip_families))
    by_role = and_(e.role.in_(roles), not_(skipped)) if skip_families else e.role.in_(roles)
    q = (
        select(e.id, e.at, e.actor, e.actor_id, e.role, e.action, e.target, e.outcome)
        .where(e.id > after_id, e.at >= since, e.at < until, or_(e.action.in_(actions), by_role))
        .order_by(e.id)
        .limit(limit)
    )
    return [ReviewEvent(*row) for row in s.execute(q).all()]


def last_successes(s: Session, actions: Sequence[str], until: float) -> dict[int, float]:
    """Account id → the time of its last event with one of ``actions`` and outcome ok
    before ``until`` (accounts with none are left out)."""
    e = AuditEvent
    q = (
        select(e.actor_id, func.max(e.at))
        .where(e.action.in_(actions), e.outcome == "ok", e.at < until, e.actor_id.is_not(None))
        .group_by(e.actor_id)
    )
    return {int(user_id): float(at) for user_id, at in s.execute(q).all() if user_id is not None}


def accounts(s: Session) -> list[Account]:
    """Every account, erased and disabled ones included, by name, with its active keys."""
    active = (
        select(ApiKey.user_id, func.count().label("n"))
        .where(ApiKey.revoked_at.is_(None))
        .group_by(ApiKey.user_id)
        .subquery()
    )
    u = User
    q = (
        select(
            u.id,
            u.name,
            u.role,
            u.source,
            u.disabled,
            u.created_at,
            u.erased_at,
            u.totp_secret.is_not(None),
            u.totp_last_step,
            func.coalesce(active.c.n, 0),
        )
        .outerjoin(active, active.c.user_id == u.id)
        .order_by(u.name)
    )
    return [
        Account(
            int(r[0]),
            str(r[1]),
            str(r[2]),
            str(r[3]),
            bool(r[4]),
            float(r[5]),
            None if r[6] is None else float(r[6]),
            bool(r[7]),
            None if r[8] is None else int(r[8]),
            int(r[9]),
        )
        for r in s.execute(q).all()
    ]
