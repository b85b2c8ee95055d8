"""Daily quotas: requests and tokens per user per day, in the site's time zone.

A request is counted when it is admitted to the engine, never before (a refused request
costs nothing); its tokens are charged when it ends, finished or not, so leaving mid-answer
does not dodge a token limit.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass

from deepseekd.config import QuotaSettings
from deepseekd.domain.identity import Identity
from deepseekd.services.usage_report import UsageReport, build_report, check_group, report_range
from deepseekd.services.usage_summary import UsageSummary, build_summary, day_starts
from deepseekd.store import Tx
from deepseekd.store import usage as repo
from deepseekd.store import usage_summary as summary_repo
from deepseekd.store.db import Database


@dataclass(frozen=True)
class QuotaState:
    allowed: bool
    limit: int
    remaining: int
    reset_at: int
    """Epoch seconds when the day turns over."""
    day: str
    reason: str = ""
    """Why it was refused: 'requests' or 'tokens'."""


@dataclass(frozen=True)
class DailyUsage:
    """What a user has used of today's quota (``GET /v1/me/usage``)."""

    day: str
    reset_at: int
    """Epoch seconds when the day turns over."""
    requests: int
    request_limit: int
    tokens: int
    token_limit: int
    """0 = no token limit."""
    reasoning_tokens: int
    """The reasoning part of ``tokens``."""

    def as_json(self) -> dict[str, object]:
        """The answer's shape; an unlimited token count has a null limit and remainder."""
        unlimited = self.token_limit <= 0
        return {
            "object": "usage",
            "day": self.day,
            "reset_at": self.reset_at,
            "requests": {
                "used": self.requests,
                "limit": self.request_limit,
                "remaining": max(self.request_limit - self.requests, 0),
            },
            "tokens": {
                "used": self.tokens,
                "limit": None if unlimited else self.token_limit,
                "remaining": None if unlimited else max(self.token_limit - self.tokens, 0),
                "reasoning": self.reasoning_tokens,
            },
        }


class QuotaService:
    def __init__(self, db: Database, cfg: QuotaSettings, clock: Callable[[], float]) -> None:
        self._db = db
        self._cfg = cfg
        self._tz = zoneinfo.ZoneInfo(cfg.timezone)
        self._now = clock
        self.default_daily_requests = cfg.daily_requests
        """Changeable at run time from the admin console."""

    def window(self, now: float) -> tuple[str, int]:
        """(quota day key, epoch second of the next reset) for the instant ``now``."""
        local = dt.datetime.fromtimestamp(now, self._tz)
        shifted = local - dt.timedelta(hours=self._cfg.reset_hour)
        day = shifted.date()
        nxt = dt.datetime.combine(
            day + dt.timedelta(days=1), dt.time(self._cfg.reset_hour), tzinfo=self._tz
        )
        return day.isoformat(), int(nxt.timestamp())

    def limits(self, who: Identity) -> tuple[int, int]:
        req = who.daily_request_limit
        tok = who.daily_token_limit
        return (
            self.default_daily_requests if req is None else req,
            self._cfg.daily_tokens if tok is None else tok,
        )

    async def consume(self, who: Identity) -> QuotaState:
        """Count one request if the user is under both limits; say so either way."""
        return await self._db.write("quota.consume", lambda s: self.consume_in(s, who))

    def consume_in(self, s: Tx, who: Identity) -> QuotaState:
        """``consume`` inside the caller's write transaction (a stream's ``.start`` event
        commits with it: services/chat/service.py)."""
        day, reset_at = self.window(self._now())
        req_limit, tok_limit = self.limits(who)
        if req_limit <= 0:
            return QuotaState(False, req_limit, 0, reset_at, day, "requests")
        counted, requests, _tokens = repo.count_request(s, who.user_id, day, req_limit, tok_limit)
        if counted:
            return QuotaState(True, req_limit, max(req_limit - requests, 0), reset_at, day)
        reason = "requests" if requests >= req_limit else "tokens"
        return QuotaState(False, req_limit, 0, reset_at, day, reason)  # nothing more today

    async def peek(self, who: Identity) -> QuotaState:
        day, reset_at = self.window(self._now())
        req_limit, _ = self.limits(who)
        used = await self._db.read("quota.peek", lambda s: repo.requests_on(s, who.user_id, day))
        return QuotaState(True, req_limit, max(req_limit - used, 0), reset_at, day)

    async def today(self, who: Identity) -> DailyUsage:
        """The user's counts and limits for the current quota day; reads only, counts nothing."""
        day, reset_at = self.window(self._now())
        req_limit, tok_limit = self.limits(who)
        requests, tokens, reasoning = await self._db.read(
            "quota.today", lambda s: repo.counts_on(s, who.user_id, day)
        )
        return DailyUsage(day, reset_at, requests, req_limit, tokens, tok_limit, reasoning)

    async def add_tokens(
        self, who: Identity, day: str, tokens: int, reasoning_tokens: int = 0
    ) -> None:
        """Charge a finished request's tokens to the day it was admitted on. ``tokens`` is
        everything (prompt + output); ``reasoning_tokens``, the reasoning part of the output,
        is also kept apart: the limit counts all tokens, reports show the share."""
        if tokens <= 0:
            return
        await self._db.write(
            "quota.tokens", lambda s: repo.add_tokens(s, who.user_id, day, tokens, reasoning_tokens)
        )

    async def department_usage(
        self, first: str | None, last: str | None, group: str | None
    ) -> UsageReport:
        """Requests and tokens per group and day for the days ``first``..``last`` (inclusive,
        'YYYY-MM-DD'; by default the 30 quota days ending today), only ``group`` when given.
        Groups are the users' current ones (see services/usage_report)."""
        today = dt.date.fromisoformat(self.window(self._now())[0])
        start, end = report_range(first, last, today)
        wanted = check_group(group)
        rows = await self._db.read("quota.report", lambda s: repo.usage_with_groups(s, start, end))
        return build_report(start, end, rows, wanted)

    async def summary(self, first: str | None, last: str | None, group: str | None) -> UsageSummary:
        """Requests, tokens, failures and refusals per quota day and the top users for the
        days ``first``..``last`` (as ``department_usage``), only ``group`` when given."""
        today = dt.date.fromisoformat(self.window(self._now())[0])
        start, end = report_range(first, last, today)
        wanted = check_group(group)
        starts = day_starts(start, end, self._cfg.timezone, self._cfg.reset_hour)
        usage, failed = await self._db.read(
            "quota.summary",
            lambda s: (
                repo.usage_with_groups(s, start, end),
                summary_repo.failures(s, starts[0], starts[-1]),
            ),
        )
        return build_summary(start, end, wanted, usage, failed, starts)
