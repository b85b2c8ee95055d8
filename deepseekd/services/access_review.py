"""The access review (issue #17): for a period, who accessed whose data, sign-ins per
account, dormant accounts and admins without a recent second factor; as JSON and CSV, for
``GET /audit/api/access-review``, ``deepseekd report access`` and the auditor's console.

Everything comes from the audit log and the accounts, never from chat content:

* ``data_access``: exports, erasures, break-glass starts and reads, whoever did them, and
  every event done in the admin or CLI role except the admin's own use (chats,
  conversations, sign-ins and sign-outs, their own password) and what the daemon records
  about an account by itself (lockouts, directory sign-in changes). Summed per actor, role,
  action, target and outcome, with the first and last time.
* ``sign_ins``: per account, successful and refused sign-ins (``web.login`` and
  ``admin.login``: password, directory, OpenID provider; an API key is not a sign-in);
  refusals that named no account (and ``oidc.login`` refusals) are counted apart.
* ``dormant``: enabled accounts, not erased, with no successful sign-in in the
  ``dormant_days`` up to the period's end (looking back as far as the log goes); an account
  that never signed in counts from its creation.
* ``admins_without_recent_totp``: enabled admins whose last second factor (a TOTP code this
  daemon accepted, or a console sign-in, which always takes one) is ``admin_totp_days`` old
  or older, or who never gave one.

Days are those of ``[quota] timezone``, like the usage report. The period's events are read
a page at a time and summed as they come, so a long log is never held in memory.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import zoneinfo
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from deepseekd.config import AuditSettings
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Invalid
from deepseekd.domain.identity import Identity
from deepseekd.services.audit import AuditLog
from deepseekd.services.usage_report import report_range, safe_cell
from deepseekd.store import Tx
from deepseekd.store import access_review as repo
from deepseekd.store.access_review import Account, ReviewEvent
from deepseekd.store.db import Database

SIGN_INS = ("web.login", "admin.login")
ADMIN_SIGN_IN = "admin.login"
PROVIDER_REFUSAL = "oidc.login"
"""A sign-in with the OpenID provider refused before it reached an account."""
DATA_ACTIONS = ("user.export", "user.erase", "breakglass.start", "breakglass.read")
"""Access to another person's data, whoever does it."""
ADMIN_ROLES = ("admin", "cli")
OWN_USE = ("inference", "history")
"""Action families (``inference``, ``inference.*``) that are an admin's own chats."""
NOT_ADMIN_ACTIONS = frozenset(
    {
        "web.logout",
        "admin.logout",
        "auth.logout",
        "admin.totp",
        "user.password_change",
        "account.lockout",
        "user.directory_create",
        "user.directory_change",
        "user.directory_remove",
    }
)
"""Events in the admin role that are no admin action: the account's own sign-out, password
and refused codes, and what the daemon records about the account by itself."""
BATCH = 2000
MAX_THRESHOLD_DAYS = 3650
DAY_S = 86400
TOTP_STEP_S = 30
CSV_TIME = "%Y-%m-%d %H:%M:%S"
REPORT_HEADER = (
    "section",
    "from",
    "to",
    "timezone",
    "as_of",
    "dormant_days",
    "admin_totp_days",
    "events",
    "unattributed_failures",
)
ACCESS_HEADER = (
    "section",
    "actor",
    "role",
    "action",
    "target",
    "outcome",
    "count",
    "first",
    "last",
)
SIGN_IN_HEADER = ("section", "user", "role", "succeeded", "failed", "last_success", "last_failure")
DORMANT_HEADER = (
    "section",
    "user",
    "role",
    "source",
    "created",
    "last_sign_in",
    "days",
    "active_keys",
)
ADMIN_HEADER = ("section", "user", "source", "totp_enrolled", "last_second_factor", "days")


@dataclass(frozen=True)
class DataAccess:
    actor: str | None
    role: str | None
    action: str
    target: str | None
    outcome: str
    count: int
    first_at: float
    last_at: float


@dataclass(frozen=True)
class SignIns:
    user: str
    role: str | None
    succeeded: int
    failed: int
    last_success_at: float | None
    """The last successful sign-in in the period (None: none in it)."""
    last_failure_at: float | None


@dataclass(frozen=True)
class Dormant:
    user: str
    role: str
    source: str
    created_at: float
    last_sign_in_at: float | None
    """The last successful sign-in before the period's end, however long ago; None: never."""
    days: int
    """Whole days without a sign-in (since its creation when it never signed in)."""
    active_keys: int
    """API keys the account still holds (their use is no sign-in)."""


@dataclass(frozen=True)
class StaleAdmin:
    user: str
    source: str
    totp_enrolled: bool
    last_second_factor_at: float | None
    days: int | None
    """Whole days since the last second factor; None: never gave one."""


@dataclass(frozen=True)
class AccessReport:
    first: str
    last: str
    timezone: str
    since: float
    until: float
    """The period as instants: ``since <= at < until``."""
    as_of: float
    """What dormancy and second-factor age are measured at: the period's end, or now."""
    dormant_days: int
    admin_totp_days: int
    events: int
    """Audit events of the period read for the report."""
    data_access: tuple[DataAccess, ...]
    sign_ins: tuple[SignIns, ...]
    unattributed_failures: int
    """Refused sign-ins that named no account (unknown names, provider refusals)."""
    dormant: tuple[Dormant, ...]
    admins_without_recent_totp: tuple[StaleAdmin, ...]

    @property
    def filename(self) -> str:
        return f"access-review-{self.first}-{self.last}.csv"

    def summary(self) -> dict[str, int]:
        return {
            "events": self.events,
            "data_access": sum(r.count for r in self.data_access),
            "sign_ins_succeeded": sum(r.succeeded for r in self.sign_ins),
            "sign_ins_failed": sum(r.failed for r in self.sign_ins) + self.unattributed_failures,
            "unattributed_failures": self.unattributed_failures,
            "dormant": len(self.dormant),
            "admins_without_recent_totp": len(self.admins_without_recent_totp),
        }

    def as_json(self) -> dict[str, Any]:
        """Times are epoch seconds, like the audit events'."""
        return {
            "object": "access_review",
            "from": self.first,
            "to": self.last,
            "timezone": self.timezone,
            "as_of": self.as_of,
            "dormant_days": self.dormant_days,
            "admin_totp_days": self.admin_totp_days,
            "summary": self.summary(),
            "data_access": [asdict(r) for r in self.data_access],
            "sign_ins": [asdict(r) for r in self.sign_ins],
            "dormant": [asdict(r) for r in self.dormant],
            "admins_without_recent_totp": [asdict(r) for r in self.admins_without_recent_totp],
        }

    def as_csv(self) -> str:
        """Five blocks on one sheet, each its own header row and separated by an empty line;
        every row starts with its block's name (``section``), so a filter on the first
        column keeps one. Times are 'YYYY-MM-DD HH:MM:SS' in the report's time zone."""
        buf = io.StringIO()
        out = csv.writer(buf)
        for i, (header, rows) in enumerate(_csv_blocks(self)):
            if i:
                out.writerow(())
            out.writerow(header)
            out.writerows(
                [_cell(v, self.timezone) if isinstance(v, float | str) else v for v in row]
                for row in rows
            )
        return buf.getvalue()


def _cell(value: float | str, tz: str) -> str:
    """A time as local text; a string safe from a spreadsheet's formulas."""
    if isinstance(value, float):
        at = dt.datetime.fromtimestamp(value, zoneinfo.ZoneInfo(tz))
        return at.strftime(CSV_TIME)
    return safe_cell(value)


def _csv_blocks(r: AccessReport) -> list[tuple[tuple[str, ...], Iterable[Sequence[Any]]]]:
    """(header, rows) per block; a value that is a float is a time."""
    report = (
        "report",
        r.first,
        r.last,
        r.timezone,
        r.as_of,
        r.dormant_days,
        r.admin_totp_days,
        r.events,
        r.unattributed_failures,
    )
    return [
        (
            REPORT_HEADER,
            [report],
        ),
        (
            ACCESS_HEADER,
            [("data_access", *_blank(asdict(a).values())) for a in r.data_access],
        ),
        (
            SIGN_IN_HEADER,
            [("sign_ins", *_blank(asdict(s).values())) for s in r.sign_ins],
        ),
        (
            DORMANT_HEADER,
            [("dormant", *_blank(asdict(d).values())) for d in r.dormant],
        ),
        (
            ADMIN_HEADER,
            [
                ("admins_without_recent_totp", *_blank(asdict(a).values()))
                for a in r.admins_without_recent_totp
            ],
        ),
    ]


def _blank(values: Iterable[Any]) -> list[Any]:
    """None as an empty cell, booleans as yes/no."""
    return [
        "" if v is None else ("yes" if v else "no") if isinstance(v, bool) else v for v in values
    ]


# -- the request ---------------------------------------------------------------------


def threshold_days(raw: object, name: str, default: int) -> int:
    """A number of days from 1 to MAX_THRESHOLD_DAYS (a query string's digits, or an int)."""
    if raw is None or raw == "":
        return default
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 6:
        value = int(raw)
    if value is None or not 1 <= value <= MAX_THRESHOLD_DAYS:
        raise Invalid(f"{name}: a whole number of days from 1 to {MAX_THRESHOLD_DAYS}", field=name)
    return value


def day_start(day: dt.date, tz: zoneinfo.ZoneInfo) -> float:
    """The first instant of ``day`` in ``tz`` (a day with a clock change included)."""
    return dt.datetime.combine(day, dt.time(0), tzinfo=tz).timestamp()


# -- the sums ------------------------------------------------------------------------


@dataclass
class _Count:
    name: str | None
    role: str | None
    count: int = 0
    failed: int = 0
    first: float | None = None
    last: float | None = None
    last_failed: float | None = None


@dataclass
class Tally:
    """The period's events, summed as they are read."""

    access: dict[tuple[str | None, str | None, str, str | None, str], _Count] = field(
        default_factory=dict
    )
    sign_ins: dict[int, _Count] = field(default_factory=dict)
    unattributed: int = 0
    events: int = 0

    def add(self, ev: ReviewEvent) -> None:
        self.events += 1
        if ev.action in SIGN_INS or ev.action == PROVIDER_REFUSAL:
            self._sign_in(ev)
        elif is_data_access(ev):
            key = (ev.actor, ev.role, ev.action, ev.target, ev.outcome)
            c = self.access.setdefault(key, _Count(ev.actor, ev.role))
            c.count += 1
            c.first = ev.at if c.first is None else min(c.first, ev.at)
            c.last = ev.at if c.last is None else max(c.last, ev.at)

    def _sign_in(self, ev: ReviewEvent) -> None:
        if ev.actor_id is None:  # an unknown name, or refused before it reached an account
            self.unattributed += ev.outcome != "ok"
            return
        c = self.sign_ins.setdefault(ev.actor_id, _Count(ev.actor, ev.role))
        c.name, c.role = ev.actor, ev.role  # the latest, as the scan is in id order
        if ev.outcome == "ok":
            c.count += 1
            c.last = ev.at if c.last is None else max(c.last, ev.at)
        else:
            c.failed += 1
            c.last_failed = ev.at if c.last_failed is None else max(c.last_failed, ev.at)

    def data_access(self) -> tuple[DataAccess, ...]:
        rows = [
            DataAccess(actor, role, action, target, outcome, c.count, c.first or 0.0, c.last or 0.0)
            for (actor, role, action, target, outcome), c in self.access.items()
        ]
        return tuple(
            sorted(rows, key=lambda r: (r.actor or "", r.action, r.target or "", r.outcome))
        )

    def sign_in_rows(self, names: dict[int, Account]) -> tuple[SignIns, ...]:
        """Per account; named and with the role it has now when it still exists."""
        rows = []
        for user_id, c in self.sign_ins.items():
            acc = names.get(user_id)
            name = acc.name if acc else c.name or f"#{user_id}"
            role = acc.role if acc else c.role
            rows.append(SignIns(name, role, c.count, c.failed, c.last, c.last_failed))
        return tuple(sorted(rows, key=lambda r: r.user))


def is_data_access(ev: ReviewEvent) -> bool:
    """An event the ``data_access`` section reports."""
    if ev.action in DATA_ACTIONS:
        return True
    family = ev.action.split(".", 1)[0]
    return ev.role in ADMIN_ROLES and family not in OWN_USE and ev.action not in NOT_ADMIN_ACTIONS


def _live(acc: Account, as_of: float) -> bool:
    """An enabled account, not erased, that existed at ``as_of``."""
    return not acc.disabled and acc.erased_at is None and acc.created_at <= as_of


def dormant_accounts(
    accounts: Iterable[Account], last_sign_in: dict[int, float], as_of: float, days: int
) -> tuple[Dormant, ...]:
    """Enabled accounts with no sign-in in the ``days`` up to ``as_of`` (exactly ``days``
    ago is dormant)."""
    rows = []
    for acc in accounts:
        if not _live(acc, as_of):
            continue
        last = last_sign_in.get(acc.id)
        idle = as_of - (last if last is not None else acc.created_at)
        if idle >= days * DAY_S:
            rows.append(
                Dormant(
                    acc.name,
                    acc.role,
                    acc.source,
                    acc.created_at,
                    last,
                    int(idle // DAY_S),
                    acc.active_keys,
                )
            )
    return tuple(rows)


def stale_admins(
    accounts: Iterable[Account],
    last_admin_sign_in: dict[int, float],
    as_of: float,
    until: float,
    days: int,
) -> tuple[StaleAdmin, ...]:
    """Enabled admins whose last second factor before ``until`` is ``days`` old at ``as_of``
    or older, or who never gave one."""
    rows = []
    for acc in accounts:
        if acc.role != "admin" or not _live(acc, as_of):
            continue
        seen = [t for t in (last_admin_sign_in.get(acc.id), _step_time(acc)) if t is not None]
        # A code accepted after the period's end says nothing of the period.
        last = max((t for t in seen if t < until), default=None)
        if last is None or as_of - last >= days * DAY_S:
            age = None if last is None else int((as_of - last) // DAY_S)
            rows.append(StaleAdmin(acc.name, acc.source, acc.totp_enrolled, last, age))
    return tuple(rows)


def _step_time(acc: Account) -> float | None:
    return None if acc.totp_last_step is None else float(acc.totp_last_step * TOTP_STEP_S)


# -- the service ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Period:
    first: str
    last: str
    since: float
    until: float
    as_of: float


class AccessReview:
    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        cfg: AuditSettings,
        timezone: str,
        clock: Callable[[], float],
    ) -> None:
        self._db = db
        self._audit = audit
        self._cfg = cfg
        self._tz_name = timezone
        self._tz = zoneinfo.ZoneInfo(timezone)
        self._now = clock
        self.batch = BATCH
        """Events read per page."""

    def period(self, first: str | None, last: str | None) -> _Period:
        """Days ``first``..``last`` inclusive (by default the last 30 ending today)."""
        now = self._now()
        today = dt.datetime.fromtimestamp(now, self._tz).date()
        start, end = report_range(first, last, today)
        since = day_start(dt.date.fromisoformat(start), self._tz)
        until = day_start(dt.date.fromisoformat(end) + dt.timedelta(days=1), self._tz)
        return _Period(start, end, since, until, min(until, now))

    async def report(
        self,
        first: str | None,
        last: str | None,
        dormant_days: object = None,
        *,
        by: Identity | None,
        fmt: str = "json",
    ) -> AccessReport:
        """The review of days ``first``..``last`` ('YYYY-MM-DD', inclusive; by default the
        last 30 ending today, at most 366); audited as ``report.access``. Raises Invalid
        naming ``from``, ``to`` or ``dormant_days``."""
        p = self.period(first, last)
        dormant = threshold_days(dormant_days, "dormant_days", self._cfg.dormant_days)
        tally = await self._scan(p.since, p.until)

        def read(s: Tx) -> tuple[list[Account], dict[int, float], dict[int, float]]:
            return (
                repo.accounts(s),
                repo.last_successes(s, SIGN_INS, p.until),
                repo.last_successes(s, (ADMIN_SIGN_IN,), p.until),
            )

        accounts, last_sign_in, last_admin = await self._db.read("access_review.accounts", read)
        by_id = {a.id: a for a in accounts}
        report = AccessReport(
            p.first,
            p.last,
            self._tz_name,
            p.since,
            p.until,
            p.as_of,
            dormant,
            self._cfg.admin_totp_days,
            tally.events,
            tally.data_access(),
            tally.sign_in_rows(by_id),
            tally.unattributed,
            dormant_accounts(accounts, last_sign_in, p.as_of, dormant),
            stale_admins(accounts, last_admin, p.as_of, p.until, self._cfg.admin_totp_days),
        )
        extra = {"from": p.first, "to": p.last, "dormant_days": dormant, "format": fmt}
        await self._audit.append(Event.by(by, "report.access", extra=extra))
        return report

    async def _scan(self, since: float, until: float) -> Tally:
        tally, after = Tally(), 0
        while True:
            page = await self._db.read(
                "access_review.events", self._page(since, until, after, self.batch)
            )
            for ev in page:
                tally.add(ev)
            if len(page) < self.batch:
                return tally
            after = page[-1].id

    @staticmethod
    def _page(
        since: float, until: float, after: int, batch: int
    ) -> Callable[[Tx], list[ReviewEvent]]:
        return lambda s: repo.period_events(
            s,
            since=since,
            until=until,
            after_id=after,
            limit=batch,
            actions=(*SIGN_INS, PROVIDER_REFUSAL, *DATA_ACTIONS),
            roles=ADMIN_ROLES,
            skip_families=OWN_USE,
        )
