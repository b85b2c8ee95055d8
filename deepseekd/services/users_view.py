"""The console's Users view: every account with its last sign-in and today's counts,
searched, sorted and cut into pages here. The accounts are read whole (a hospital has
thousands, not millions) with two grouped queries beside them, so a search in names and
groups and a sort on a computed column (today's requests, the last sign-in) cost nothing
more than the plain list did."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from deepseekd.domain.errors import Invalid
from deepseekd.services.access_review import SIGN_INS
from deepseekd.services.accounts import AccountService, UserInfo
from deepseekd.services.usage import QuotaService
from deepseekd.store import users_view as repo
from deepseekd.store.db import Database

SORTS = ("name", "role", "created_at", "last_login", "requests_today")
MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_QUERY = 64


@dataclass(frozen=True)
class ViewQuery:
    q: str = ""
    sort: str = "name"
    descending: bool = False
    limit: int | None = None
    """None: every match (the old call, with no parameters)."""
    offset: int = 0


def _int(raw: str, field: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise Invalid(f"{field}: an integer from {low} to {high}", field=field)
    return value


def parse_query(params: Mapping[str, str]) -> ViewQuery:
    """The view's query parameters, checked; 400 naming the field for a bad one."""
    q = params.get("q", "").strip().lower()
    if len(q) > MAX_QUERY:
        raise Invalid(f"q: at most {MAX_QUERY} characters", field="q")
    sort = params.get("sort", "name")
    if sort not in SORTS:
        raise Invalid(f"sort: one of {', '.join(SORTS)}", field="sort")
    order = params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise Invalid("order: asc or desc", field="order")
    paged = "limit" in params or "offset" in params
    limit = _int(params.get("limit", str(DEFAULT_PAGE)), "limit", 1, MAX_PAGE) if paged else None
    offset = _int(params.get("offset", "0"), "offset", 0, 10_000_000)
    return ViewQuery(q, sort, order == "desc", limit, offset)


def _matches(user: UserInfo, q: str) -> bool:
    return not q or q in user.name or any(q in g.lower() for g in user.groups)


def _key(sort: str, row: dict[str, Any]) -> tuple[Any, ...]:
    """Sort key; missing values (never signed in) sort as the smallest. The rows come by
    name and Python's sort is stable (reversed too), so ties stay in name order."""
    value = row[{"last_login": "last_login_at"}.get(sort, sort)]
    return (value is not None, value if value is not None else 0)


class UsersView:
    def __init__(self, db: Database, accounts: AccountService, quota: QuotaService) -> None:
        self._db = db
        self._accounts = accounts
        self._quota = quota

    async def page(self, query: ViewQuery, now: float) -> dict[str, Any]:
        """{"users": the page, "total": matches, "limit", "offset", "day"}."""
        users = await self._accounts.list_users()
        day, _ = self._quota.window(now)
        logins, counts = await self._db.read(
            "user.view",
            lambda s: (repo.last_sign_ins(s, SIGN_INS), repo.counts_on_day(s, day)),
        )
        rows = []
        for user in users:
            if not _matches(user, query.q):
                continue
            requests, tokens = counts.get(user.name, (0, 0))
            row = asdict(user)
            row.update(
                last_login_at=logins.get(user.name),
                requests_today=requests,
                tokens_today=tokens,
            )
            rows.append(row)
        if query.sort != "name" or query.descending:
            rows.sort(key=lambda r: _key(query.sort, r), reverse=query.descending)
        end = None if query.limit is None else query.offset + query.limit
        return {
            "users": rows[query.offset : end],
            "total": len(rows),
            "limit": query.limit,
            "offset": query.offset,
            "day": day,
        }
