"""What the console's Users view reads besides the accounts themselves: each account's last
successful sign-in (from the audit log, which keeps it however old; sessions are pruned) and
its counts for one quota day. Both are one grouped query keyed by user name."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deepseekd.store.schema import AuditEvent, QuotaUsage, User


def last_sign_ins(s: Session, actions: Sequence[str]) -> dict[str, float]:
    """User name → the time of its last ``actions`` event with outcome ok (the action
    index narrows the scan to sign-ins; accounts never signed in are left out)."""
    e = AuditEvent
    q = (
        select(User.name, func.max(e.at))
        .join(User, User.id == e.actor_id)
        .where(e.action.in_(actions), e.outcome == "ok")
        .group_by(User.name)
    )
    return {str(name): float(at) for name, at in s.execute(q).all()}


def counts_on_day(s: Session, day: str) -> dict[str, tuple[int, int]]:
    """User name → (requests, tokens) on quota day ``day``; users with none left out."""
    q = (
        select(User.name, QuotaUsage.requests, QuotaUsage.tokens)
        .join(User, User.id == QuotaUsage.user_id)
        .where(QuotaUsage.day == day)
    )
    return {str(n): (int(r or 0), int(t or 0)) for n, r, t in s.execute(q).all()}


def taken_names(s: Session, names: Sequence[str]) -> set[str]:
    """Those of ``names`` that an account (erased ones included) already has."""
    if not names:
        return set()
    return set(s.execute(select(User.name).where(User.name.in_(list(names)))).scalars())
