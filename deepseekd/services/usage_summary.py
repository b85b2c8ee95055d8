"""The usage charts of the admin console (``GET /admin/api/usage/summary``): requests and
tokens per quota day, the users who used the most, and the inference requests that failed
(the engine or the store) or were refused (the daily quota) per day.

Requests and tokens come from the daily quota counts (a refused request costs nothing, so it
is not among them); failures and refusals from the audit log's closing events of inference
requests (time, action, outcome and actor only). A day is a quota day: it starts at
``[quota] reset_hour`` in ``[quota] timezone``, as the counts' days do. With a group, only
users in that group now count (see services/usage_report for what "now" means).
"""

from __future__ import annotations

import bisect
import datetime as dt
import zoneinfo
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from deepseekd.services.usage_report import groups_of
from deepseekd.store.usage import UsageRow
from deepseekd.store.usage_summary import FailureRow

TOP_USERS = 10


@dataclass
class Counts:
    requests: int = 0
    tokens: int = 0
    reasoning_tokens: int = 0
    failed: int = 0
    """Requests the engine or the store failed (audit outcome 'error')."""
    refused: int = 0
    """Requests the daily quota refused (audit outcome 'denied')."""


@dataclass
class DayCounts(Counts):
    day: str = ""
    users: set[str] = field(default_factory=set)

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "users": len(self.users)}


@dataclass
class UserCounts(Counts):
    name: str = ""

    def as_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class UsageSummary:
    first: str
    last: str
    group: str | None
    days: tuple[DayCounts, ...]
    """Every day of the range, oldest first, zeros included (a chart needs the gaps)."""
    top_users: tuple[UserCounts, ...]
    """The most requests first (then tokens, then name); at most TOP_USERS."""
    totals: DayCounts

    def as_json(self) -> dict[str, object]:
        totals = self.totals.as_json()
        totals.pop("day")
        return {
            "object": "usage.summary",
            "from": self.first,
            "to": self.last,
            "group": self.group,
            "days": [d.as_json() for d in self.days],
            "top_users": [u.as_json() for u in self.top_users],
            "totals": totals,
        }


def day_starts(first: str, last: str, tz: str, reset_hour: int) -> list[float]:
    """The epoch second each quota day of ``first``..``last`` begins, and the one after
    ``last`` (so day i is ``starts[i] <= t < starts[i + 1]``)."""
    zone = zoneinfo.ZoneInfo(tz)
    start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    days = (end - start).days + 2
    return [
        dt.datetime.combine(start + dt.timedelta(days=i), dt.time(reset_hour), zone).timestamp()
        for i in range(days)
    ]


def _member(groups: str | None, wanted: str | None) -> bool:
    return wanted is None or wanted in {g.casefold() for g in groups_of(groups)}


def build_summary(
    first: str,
    last: str,
    group: str | None,
    usage: Iterable[UsageRow],
    failures: Iterable[FailureRow],
    starts: list[float],
) -> UsageSummary:
    """Sum ``usage`` per day and per user and count ``failures`` into the day they happened
    on; only users of ``group`` when one is named."""
    wanted = group.casefold() if group else None
    first_day = dt.date.fromisoformat(first)
    names = [(first_day + dt.timedelta(days=i)).isoformat() for i in range(len(starts) - 1)]
    days = {d: DayCounts(day=d) for d in names}
    users: dict[str, UserCounts] = {}
    totals = DayCounts()
    for _user_id, day, requests, tokens, reasoning, groups, name in usage:
        if day not in days or not _member(groups, wanted):
            continue
        sums: tuple[Counts, ...] = (
            days[day],
            users.setdefault(name, UserCounts(name=name)),
            totals,
        )
        for acc in sums:
            acc.requests += requests
            acc.tokens += tokens
            acc.reasoning_tokens += reasoning
        days[day].users.add(name)
        totals.users.add(name)
    for at, outcome, actor, groups in failures:
        i = bisect.bisect_right(starts, at) - 1
        if not 0 <= i < len(names) or not _member(groups, wanted):
            continue
        accs: list[Counts] = [days[names[i]], totals]
        if actor:
            accs.append(users.setdefault(actor, UserCounts(name=actor)))
        for acc in accs:
            if outcome == "error":
                acc.failed += 1
            else:
                acc.refused += 1
    top = sorted(users.values(), key=lambda u: (-u.requests, -u.tokens, u.name))[:TOP_USERS]
    return UsageSummary(first, last, group, tuple(days[d] for d in names), tuple(top), totals)
