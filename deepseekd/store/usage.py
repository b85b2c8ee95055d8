"""Daily request and token counts per user, counted atomically.

One statement both counts and checks: an upsert whose update only applies while the count
is under the limit. SQLite serialises writers and PostgreSQL locks the conflicting row, so
the limit holds under any concurrency and across daemons sharing one PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from deepseekd.store.dialect import insert
from deepseekd.store.schema import QuotaUsage, User


def count_request(
    s: Session, user_id: int, day: str, req_limit: int, tok_limit: int
) -> tuple[bool, int, int]:
    """Count one request if the user is under both limits. Returns (counted, requests,
    tokens): the day's counts after this request, or as they stand when it was refused."""
    stmt = insert(s, QuotaUsage).values(user_id=user_id, day=day, requests=1, tokens=0)
    cond = QuotaUsage.requests < req_limit
    if tok_limit > 0:
        cond = cond & (QuotaUsage.tokens < tok_limit)
    stmt = stmt.on_conflict_do_update(
        index_elements=[QuotaUsage.user_id, QuotaUsage.day],
        set_={"requests": QuotaUsage.requests + 1},
        where=cond,
    ).returning(QuotaUsage.requests, QuotaUsage.tokens)
    row = s.execute(stmt).first()
    if row is not None:
        return True, int(row.requests), int(row.tokens)
    row = s.execute(
        select(QuotaUsage.requests, QuotaUsage.tokens).where(
            QuotaUsage.user_id == user_id, QuotaUsage.day == day
        )
    ).one()
    return False, int(row.requests), int(row.tokens)


def requests_on(s: Session, user_id: int, day: str) -> int:
    used = s.execute(
        select(QuotaUsage.requests).where(QuotaUsage.user_id == user_id, QuotaUsage.day == day)
    ).scalar_one_or_none()
    return int(used or 0)


def counts_on(s: Session, user_id: int, day: str) -> tuple[int, int, int]:
    """(requests, tokens, reasoning tokens) the user has used on ``day``; zeros for none."""
    row = s.execute(
        select(QuotaUsage.requests, QuotaUsage.tokens, QuotaUsage.reasoning_tokens).where(
            QuotaUsage.user_id == user_id, QuotaUsage.day == day
        )
    ).first()
    if row is None:
        return 0, 0, 0
    return int(row.requests or 0), int(row.tokens or 0), int(row.reasoning_tokens or 0)


def add_tokens(s: Session, user_id: int, day: str, tokens: int, reasoning_tokens: int) -> None:
    s.execute(
        update(QuotaUsage)
        .where(QuotaUsage.user_id == user_id, QuotaUsage.day == day)
        .values(
            tokens=QuotaUsage.tokens + tokens,
            reasoning_tokens=QuotaUsage.reasoning_tokens + reasoning_tokens,
        )
    )


def refund_request(s: Session, user_id: int, day: str) -> None:
    s.execute(
        update(QuotaUsage)
        .where(QuotaUsage.user_id == user_id, QuotaUsage.day == day, QuotaUsage.requests > 0)
        .values(requests=QuotaUsage.requests - 1)
    )


UsageRow = tuple[int, str, int, int, int, str | None, str]
"""(user id, day, requests, tokens, reasoning tokens, groups one per line or None, name)."""


def usage_with_groups(s: Session, first: str, last: str) -> list[UsageRow]:
    """Every user's counts for the days ``first``..``last`` (inclusive, 'YYYY-MM-DD'), with the
    user's current groups and name (see UsageRow). Days a user counted nothing on are left
    out."""
    rows = s.execute(
        select(
            QuotaUsage.user_id,
            QuotaUsage.day,
            QuotaUsage.requests,
            QuotaUsage.tokens,
            QuotaUsage.reasoning_tokens,
            User.groups,
            User.name,
        )
        .join(User, User.id == QuotaUsage.user_id)
        .where(
            QuotaUsage.day >= first,
            QuotaUsage.day <= last,
            (QuotaUsage.requests > 0) | (QuotaUsage.tokens > 0),
        )
        .order_by(QuotaUsage.day, QuotaUsage.user_id)
    ).all()
    return [
        (int(r[0]), str(r[1]), int(r[2] or 0), int(r[3] or 0), int(r[4] or 0), r[5], str(r[6]))
        for r in rows
    ]
