"""Daily request and token quotas, counted atomically in the database.

One statement both counts and checks: an upsert whose update only applies while the count
is under the limit. SQLite serialises writers and PostgreSQL locks the conflicting row, so
the limit holds under any concurrency and across daemons sharing one PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from deepseekd.config import QuotaSettings
from deepseekd.store.accounts import Identity
from deepseekd.store.db import Database
from deepseekd.store.schema import QuotaUsage


@dataclass(frozen=True)
class QuotaState:
    allowed: bool
    limit: int
    remaining: int
    reset_at: int
    """Epoch seconds when the day turns over."""
    day: str
    reason: str = ""


class QuotaService:
    def __init__(self, db: Database, cfg: QuotaSettings, clock: Callable[[], float]) -> None:
        self._db = db
        self._cfg = cfg
        self._tz = zoneinfo.ZoneInfo(cfg.timezone)
        self._now = clock
        self._insert = db.insert
        self.default_daily_requests = cfg.daily_requests
        """Changeable at run time from the admin console."""

    def window(self, now: float) -> tuple[str, int]:
        """(quota day key, epoch second of the next reset) for the instant ``now``."""
        local = dt.datetime.fromtimestamp(now, self._tz)
        shifted = local - dt.timedelta(hours=self._cfg.reset_hour)
        day = shifted.date()
        nxt = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(self._cfg.reset_hour),
                                  tzinfo=self._tz)
        return day.isoformat(), int(nxt.timestamp())

    def limits(self, who: Identity) -> tuple[int, int]:
        req = who.daily_request_limit
        tok = who.daily_token_limit
        return (self.default_daily_requests if req is None else req,
                self._cfg.daily_tokens if tok is None else tok)

    async def consume(self, who: Identity) -> QuotaState:
        """Count one request if the user is under both limits; say so either way."""
        day, reset_at = self.window(self._now())
        req_limit, tok_limit = self.limits(who)
        if req_limit <= 0:
            return QuotaState(False, req_limit, 0, reset_at, day, "requests")
        stmt = self._insert(QuotaUsage).values(user_id=who.user_id, day=day, requests=1, tokens=0)
        cond = QuotaUsage.requests < req_limit
        if tok_limit > 0:
            cond = cond & (QuotaUsage.tokens < tok_limit)
        stmt = stmt.on_conflict_do_update(
            index_elements=[QuotaUsage.user_id, QuotaUsage.day],
            set_={"requests": QuotaUsage.requests + 1},
            where=cond,
        ).returning(QuotaUsage.requests)

        def count(s: Session) -> tuple[int | None, Any]:
            used = s.execute(stmt).scalar_one_or_none()
            if used is not None:
                return used, None
            return None, s.execute(select(QuotaUsage.requests, QuotaUsage.tokens).where(
                QuotaUsage.user_id == who.user_id, QuotaUsage.day == day)).one()

        used, row = await self._db.run_write(count)
        if used is not None:
            return QuotaState(True, req_limit, max(req_limit - used, 0), reset_at, day)
        reason = "requests" if row.requests >= req_limit else "tokens"
        return QuotaState(False, req_limit, 0, reset_at, day, reason)  # nothing more today

    async def peek(self, who: Identity) -> QuotaState:
        day, reset_at = self.window(self._now())
        req_limit, _ = self.limits(who)
        async with self._db.read() as s:
            used = (await s.execute(select(QuotaUsage.requests).where(
                QuotaUsage.user_id == who.user_id, QuotaUsage.day == day))).scalar_one_or_none()
        return QuotaState(True, req_limit, max(req_limit - (used or 0), 0), reset_at, day)

    async def add_tokens(self, who: Identity, day: str, tokens: int,
                         reasoning_tokens: int = 0) -> None:
        """Charge a finished request's tokens to the day it was admitted on. ``tokens`` is
        everything (prompt + output); ``reasoning_tokens``, the reasoning part of the output,
        is also kept apart: the limit counts all tokens, reports show the share."""
        if tokens <= 0:
            return
        stmt = update(QuotaUsage).where(
            QuotaUsage.user_id == who.user_id, QuotaUsage.day == day
        ).values(tokens=QuotaUsage.tokens + tokens,
                 reasoning_tokens=QuotaUsage.reasoning_tokens + reasoning_tokens)
        await self._db.run_write(lambda s: s.execute(stmt) and None)
