"""Usage per department: requests and tokens per directory group and day, for the admin
console and its CSV download (``GET /admin/api/usage``).

A user counts in each group they are in now (the groups of their last directory sign-in or
recheck), not the groups they were in on the day counted; a user in no group, every local
account among them, counts under ``(no group)``. Group names match case-insensitively.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from deepseekd.domain.errors import Invalid
from deepseekd.services.rights import split_groups
from deepseekd.store.usage import UsageRow

NO_GROUP = "(no group)"
DEFAULT_DAYS = 30
MAX_DAYS = 366
MAX_GROUP_CHARS = 256
DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
CSV_HEADER = ("group", "day", "requests", "tokens", "reasoning_tokens", "users")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""A spreadsheet runs a cell starting with one of these as a formula (CSV injection)."""


@dataclass(frozen=True)
class GroupDay:
    group: str
    day: str
    requests: int
    tokens: int
    reasoning_tokens: int
    users: int
    """Distinct users of the group active that day."""


@dataclass(frozen=True)
class GroupTotal:
    group: str
    requests: int
    tokens: int
    reasoning_tokens: int
    users: int
    """Distinct users of the group active on any day of the range."""


@dataclass(frozen=True)
class UsageReport:
    first: str
    last: str
    group: str | None
    """The group asked for, as asked (None: every group)."""
    days: tuple[GroupDay, ...]
    """Sorted by group, then day; days a group used nothing on are left out."""
    totals: tuple[GroupTotal, ...]

    @property
    def filename(self) -> str:
        return f"usage-{self.first}-{self.last}.csv"

    def as_json(self) -> dict[str, object]:
        return {
            "object": "list",
            "from": self.first,
            "to": self.last,
            "data": [asdict(d) for d in self.days],
            "totals": [asdict(t) for t in self.totals],
        }

    def as_csv(self) -> str:
        """One line per group and day; group names that a spreadsheet would run as a
        formula get a leading apostrophe."""
        buf = io.StringIO()
        out = csv.writer(buf)
        out.writerow(CSV_HEADER)
        for d in self.days:
            out.writerow(
                (safe_cell(d.group), d.day, d.requests, d.tokens, d.reasoning_tokens, d.users)
            )
        return buf.getvalue()


def safe_cell(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_START) else text


# -- the request ---------------------------------------------------------------------


def parse_day(raw: str | None, field: str) -> dt.date | None:
    """``raw`` ('YYYY-MM-DD') as a date; None when absent or empty."""
    if raw is None or raw == "":
        return None
    if not DAY_RE.fullmatch(raw):
        raise Invalid(f"{field}: a date as YYYY-MM-DD", field=field)
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise Invalid(f"{field}: {raw} is not a date", field=field) from None


def report_range(first: str | None, last: str | None, today: dt.date) -> tuple[str, str]:
    """The days asked for, inclusive: by default the last 30 ending today."""
    end = parse_day(last, "to") or today
    start = parse_day(first, "from") or end - dt.timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise Invalid("from: must be on or before to", field="from")
    if (end - start).days + 1 > MAX_DAYS:
        raise Invalid(f"from: at most {MAX_DAYS} days from from to to", field="from")
    return start.isoformat(), end.isoformat()


def check_group(group: str | None) -> str | None:
    """The group filter, or None for every group."""
    name = (group or "").strip()
    if len(name) > MAX_GROUP_CHARS:
        raise Invalid(f"group: at most {MAX_GROUP_CHARS} characters", field="group")
    return name or None


# -- the sums ------------------------------------------------------------------------


def groups_of(raw: str | None) -> list[str]:
    """A user's groups (stored one per line), each once whatever its case; or (no group)."""
    names: dict[str, str] = {}
    for name in split_groups(raw):
        names.setdefault(name.casefold(), name)
    return list(names.values()) or [NO_GROUP]


class _Sum:
    def __init__(self) -> None:
        self.requests = self.tokens = self.reasoning = 0
        self.users: set[int] = set()

    def add(self, user_id: int, requests: int, tokens: int, reasoning: int) -> None:
        self.requests += requests
        self.tokens += tokens
        self.reasoning += reasoning
        self.users.add(user_id)


def build_report(first: str, last: str, rows: Iterable[UsageRow], group: str | None) -> UsageReport:
    """Sum ``rows`` per group and day and per group; only ``group`` when one is named."""
    wanted = group.casefold() if group else None
    per_day: dict[tuple[str, str], _Sum] = {}
    per_group: dict[str, _Sum] = {}
    spelled: dict[str, str] = {}  # casefolded name -> its smallest spelling, whatever the order
    for user_id, day, requests, tokens, reasoning, groups, _name in rows:
        for name in groups_of(groups):
            key = name.casefold()
            if wanted is not None and key != wanted:
                continue
            spelled[key] = min(spelled.get(key, name), name)
            for acc in (per_day.setdefault((key, day), _Sum()), per_group.setdefault(key, _Sum())):
                acc.add(user_id, requests, tokens, reasoning)
    days = tuple(
        GroupDay(spelled[k], day, a.requests, a.tokens, a.reasoning, len(a.users))
        for (k, day), a in sorted(per_day.items())
    )
    totals = tuple(
        GroupTotal(spelled[k], a.requests, a.tokens, a.reasoning, len(a.users))
        for k, a in sorted(per_group.items())
    )
    return UsageReport(first, last, group, days, totals)
