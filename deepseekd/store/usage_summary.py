"""What the admin console's usage charts read besides the daily counts (store/usage.py
``usage_with_groups``): the inference requests that failed or were refused (from the audit
log's plain columns: time, action, outcome, actor; never a HMAC or a detail).

Only reads; the summary's own audit event is written by the handler's service call.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from deepseekd.store.schema import AuditEvent, User

FailureRow = tuple[float, str, str | None, str | None]
"""(epoch seconds, outcome 'error' or 'denied', actor name or None, actor's groups)."""

FAILED_OUTCOMES = ("error", "denied")
INFERENCE_ACTIONS = ("inference", "inference.completion", "inference.refused")
"""The closing events of an inference request that can fail ('error': the engine or the
store failed) or be refused ('denied': the daily quota)."""


def failures(s: Session, since: float, until: float) -> list[FailureRow]:
    """Inference requests that failed or were refused with ``since <= at < until``."""
    rows = s.execute(
        select(AuditEvent.at, AuditEvent.outcome, AuditEvent.actor, User.groups)
        .outerjoin(User, User.id == AuditEvent.actor_id)
        .where(
            AuditEvent.at >= since,
            AuditEvent.at < until,
            AuditEvent.action.in_(INFERENCE_ACTIONS),
            AuditEvent.outcome.in_(FAILED_OUTCOMES),
        )
        .order_by(AuditEvent.at)
    ).all()
    return [(float(r[0]), str(r[1]), r[2], r[3]) for r in rows]
