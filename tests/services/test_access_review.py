"""The access review (services/access_review.py) on SQLite and PostgreSQL: real accounts,
real sign-ins and second factors through AuthService, real admin actions, and break-glass
and export events appended to the real audit log; each section checked row by row at its
boundaries (the period's first and last instant, dormant at exactly N days, an admin's code
given after the period), paging through the log, the time zone of the days, and the report's
own audit event."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

import pytest

from deepseekd.config import AuditSettings
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import AuthFailed, Invalid
from deepseekd.domain.identity import Identity, cli_actor
from deepseekd.security import totp
from deepseekd.services.access_review import (
    AccessReport,
    AccessReview,
    DataAccess,
    Dormant,
    SignIns,
    StaleAdmin,
)
from deepseekd.services.accounts import NewUser
from deepseekd.services.audit import AuditLog
from deepseekd.store import accounts as accounts_repo
from deepseekd.store.db import Database
from tests.db_fixtures import FakeClock
from tests.support.services import TEST_AUDIT_KEY, Accounts, make_accounts
from tests.api.helpers import secret_of

DAY = 86400.0
FIRST, LAST = "2026-05-01", "2026-05-19"
SINCE = dt.datetime(2026, 5, 1, tzinfo=dt.UTC).timestamp()
AS_OF = dt.datetime(2026, 5, 20, tzinfo=dt.UTC).timestamp()  # the end of LAST, in UTC
NOW = AS_OF + 12 * 3600  # the report is asked for at noon the day after
OLD = AS_OF - 200 * DAY  # when most accounts were created
SRC = "10.0.0.9"


@dataclass
class World:
    db: Database
    clock: FakeClock
    audit: AuditLog
    accounts: Accounts
    review: AccessReview
    new: dict[str, NewUser]

    async def at(self, when: float) -> None:
        self.clock.now = when

    async def create(self, name: str, role: str = "user", when: float = OLD) -> NewUser:
        self.clock.now = when
        self.new[name] = await self.accounts.create_user(name, role)
        return self.new[name]

    async def who(self, name: str) -> Identity:
        user = await self.db.read("t", lambda s: accounts_repo.user_by_name(s, name))
        assert user is not None
        return Identity(user.id, user.name, user.role, "session", client=SRC)

    async def web_login(self, name: str, when: float, password: str | None = None) -> None:
        self.clock.now = when
        given = password if password is not None else self.new[name].password
        await self.accounts.web_login(name, given, SRC)

    async def admin_login(self, name: str, when: float) -> None:
        self.clock.now = when
        creds = self.new[name]
        assert creds.totp_uri
        code = totp.code_at(secret_of(creds.totp_uri), when)
        await self.accounts.login(name, password=creds.password, code=code, source=SRC)

    async def x_totp(self, name: str, when: float) -> None:
        """An admin call with an API key and an X-TOTP code (accepted, not audited itself)."""
        self.clock.now = when
        creds = self.new[name]
        assert creds.totp_uri
        code = totp.code_at(secret_of(creds.totp_uri), when)
        await self.accounts.verify_second_factor(await self.who(name), code, SRC)

    async def append(self, when: float, by: Identity | None, action: str, **fields: Any) -> None:
        self.clock.now = when
        await self.audit.append(Event.by(by, action, **fields))

    async def raw(self, when: float, action: str, **fields: Any) -> None:
        """An event no account did (the daemon's, or a refusal before any account)."""
        self.clock.now = when
        await self.audit.append(Event(action=action, **fields))

    async def erase_row(self, name: str, when: float, disabled: bool = True) -> None:
        """What an erasure's first step does to the account row (services/erasure.py);
        ``disabled=False``: a row enabled again by mistake, which must stay unlisted too."""

        def fence(s: Any) -> None:
            user = accounts_repo.user_by_name(s, name)
            assert user is not None
            user.erased_at, user.disabled = when, disabled

        await self.db.write("t.erase", fence)

    async def report(self, dormant_days: object = None, **kw: Any) -> AccessReport:
        self.clock.now = NOW
        return await self.review.report(FIRST, LAST, dormant_days, by=None, **kw)


@pytest.fixture
async def w(db: Database, clock: FakeClock) -> World:
    audit = AuditLog(db, lambda: TEST_AUDIT_KEY, clock)
    review = AccessReview(db, audit, AuditSettings(), "UTC", clock)
    return World(db, clock, audit, make_accounts(db, clock, audit), review, {})


# --------------------------------------------------------------------------- data access


async def test_data_access_counts_exports_erasures_breakglass_and_admin_actions(w: World) -> None:
    await w.create("boss", "admin")
    await w.create("doc")
    await w.create("pat")
    boss, doc = await w.who("boss"), await w.who("doc")
    # Before the period: not counted; at its first instant: counted; at its end: not.
    await w.append(SINCE - 1, boss, "user.export", target="user:pat")
    await w.append(SINCE, boss, "user.export", target="user:pat")
    await w.append(SINCE + 3 * DAY, boss, "user.export", target="user:pat")
    await w.append(AS_OF, boss, "user.export", target="user:pat")
    bg = {"breakglass": 7, "scope": "read_history", "reason_code": "treatment", "minutes": 30}
    await w.append(SINCE + DAY, doc, "breakglass.start", target="user:pat", extra=bg)
    for i in range(3):
        await w.append(SINCE + DAY + 60 * (i + 1), doc, "breakglass.read", target="user:pat")
    await w.append(SINCE + DAY + 600, doc, "breakglass.start", outcome="denied", target="admin")
    # An admin action through the service (audited by it), and one from the command line.
    await w.at(SINCE + 2 * DAY)
    await w.accounts.disable_user("doc", by=boss)
    await w.create("temp", when=SINCE + 4 * DAY)
    # An erasure (the event as services/erasure.py writes it).
    await w.append(SINCE + 5 * DAY, boss, "user.erase", target="user:temp", detail="...")
    # Not reported: an admin's own chats, conversations, sign-out and password, and what the
    # daemon records about an account by itself; a plain user's own actions.
    await w.append(SINCE + DAY, boss, "inference.completion", model="m")
    await w.append(SINCE + DAY, boss, "inference")
    await w.append(SINCE + DAY, boss, "history.delete", target="conversation:x")
    await w.append(SINCE + DAY, boss, "admin.logout")
    await w.append(SINCE + DAY, boss, "user.password_change", target="user:boss")
    await w.append(SINCE + DAY, boss, "account.lockout", outcome="locked", target="user:boss")
    await w.append(SINCE + DAY, doc, "history.rename", target="conversation:y")
    await w.raw(SINCE + DAY, "service.start")  # no role: neither
    got = (await w.report()).data_access
    cli = cli_actor()
    t0 = SINCE + DAY
    assert got == (
        DataAccess("boss", "admin", "user.disable", "user:doc", "ok", 1, SINCE + 2 * DAY,
                   SINCE + 2 * DAY),
        DataAccess("boss", "admin", "user.erase", "user:temp", "ok", 1, SINCE + 5 * DAY,
                   SINCE + 5 * DAY),
        DataAccess("boss", "admin", "user.export", "user:pat", "ok", 2, SINCE, SINCE + 3 * DAY),
        DataAccess(cli, "cli", "user.create", "user:temp", "ok", 1, SINCE + 4 * DAY,
                   SINCE + 4 * DAY),
        DataAccess("doc", "user", "breakglass.read", "user:pat", "ok", 3, t0 + 60, t0 + 180),
        DataAccess("doc", "user", "breakglass.start", "admin", "denied", 1, t0 + 600, t0 + 600),
        DataAccess("doc", "user", "breakglass.start", "user:pat", "ok", 1, t0, t0),
    )


async def test_the_log_is_read_a_page_at_a_time(w: World) -> None:
    await w.create("boss", "admin")
    boss = await w.who("boss")
    for i in range(11):
        await w.append(SINCE + i, boss, "user.export", target=f"user:p{i % 2}")
        await w.append(SINCE + i, boss, "inference")  # skipped by the query, not the page
    whole = await w.report()
    w.review.batch = 3
    paged = await w.report()
    assert paged.data_access == whole.data_access
    assert [(r.target, r.count) for r in paged.data_access] == [("user:p0", 6), ("user:p1", 5)]
    assert paged.events == whole.events == 11


# --------------------------------------------------------------------------- sign-ins


async def test_sign_ins_per_user_successful_and_failed(w: World) -> None:
    await w.create("nurse")
    await w.create("boss", "admin")
    await w.web_login("nurse", SINCE - 10)  # before the period: not counted here
    await w.web_login("nurse", SINCE + DAY)
    await w.web_login("nurse", SINCE + 2 * DAY)
    for i in range(2):
        with pytest.raises(AuthFailed):
            await w.web_login("nurse", SINCE + 3 * DAY + i, password="wrong-password-1")
    await w.admin_login("boss", SINCE + 4 * DAY)
    with pytest.raises(AuthFailed):
        await w.web_login("nobody", SINCE + 5 * DAY, password="whatever-it-is")
    await w.raw(SINCE + 5 * DAY, "oidc.login", outcome="denied", detail="state_mismatch")
    # An API key is no sign-in.
    assert await w.accounts.authenticate_key(w.new["nurse"].api_key) is not None
    r = await w.report()
    assert r.sign_ins == (
        SignIns("boss", "admin", 1, 0, SINCE + 4 * DAY, None),
        SignIns("nurse", "user", 2, 2, SINCE + 2 * DAY, SINCE + 3 * DAY + 1),
    )
    assert r.unattributed_failures == 2  # the unknown name, and the provider's refusal
    summary = r.summary()
    assert (summary["sign_ins_succeeded"], summary["sign_ins_failed"]) == (3, 4)


# --------------------------------------------------------------------------- dormant


async def test_dormant_accounts_and_their_boundaries(w: World) -> None:
    for name in ("old", "recent", "edge", "edge.plus", "never", "off", "gone", "gone2", "keyonly"):
        await w.create(name)
    await w.create("fresh", when=AS_OF - 89 * DAY)  # new and unused: not yet dormant
    await w.create("fresh90", when=AS_OF - 90 * DAY)  # unused for exactly 90 days
    await w.create("late", when=NOW)  # created after the period: not there to review
    await w.web_login("old", AS_OF - 100 * DAY)  # long before the period: still counted
    await w.web_login("recent", AS_OF - 100 * DAY)
    await w.web_login("recent", AS_OF - 10 * DAY)
    await w.web_login("edge", AS_OF - 90 * DAY)  # exactly 90 days: dormant
    await w.web_login("edge.plus", AS_OF - 90 * DAY + 1)  # a second less: not
    await w.web_login("gone", AS_OF - 120 * DAY)
    await w.web_login("off", AS_OF - 120 * DAY)
    await w.web_login("recent", AS_OF + 3600)  # after the period's end: says nothing of it
    with pytest.raises(AuthFailed):  # a refused sign-in does not make an account active
        await w.web_login("never", AS_OF - DAY, password="wrong-password-1")
    await w.at(AS_OF - 5 * DAY)
    await w.accounts.disable_user("off")  # disabled: not listed
    await w.erase_row("gone", AS_OF - 5 * DAY)  # erased: never listed
    await w.erase_row("gone2", AS_OF - 5 * DAY, disabled=False)
    r = await w.report()
    assert r.dormant == (
        Dormant("edge", "user", "local", OLD, AS_OF - 90 * DAY, 90, 1),
        Dormant("fresh90", "user", "local", AS_OF - 90 * DAY, None, 90, 1),
        Dormant("keyonly", "user", "local", OLD, None, 200, 1),  # its key use is no sign-in
        Dormant("never", "user", "local", OLD, None, 200, 1),
        Dormant("old", "user", "local", OLD, AS_OF - 100 * DAY, 100, 1),
    )
    assert r.as_of == AS_OF and r.dormant_days == 90
    # Another threshold for this report only: 101 days spares "old", 10 catches "recent".
    assert "old" not in [d.user for d in (await w.report(101)).dormant]
    assert "recent" in [d.user for d in (await w.report("10")).dormant]


async def test_a_period_ending_today_is_measured_now(w: World) -> None:
    await w.create("nurse")
    await w.web_login("nurse", AS_OF - 90 * DAY + 3600)  # 90 days before NOW, not AS_OF
    w.clock.now = NOW
    today = await w.review.report(FIRST, "2026-05-20", by=None)
    assert today.as_of == NOW
    assert [d.user for d in today.dormant] == ["nurse"]
    assert [d.user for d in (await w.report()).dormant] == []  # to = the day before


# --------------------------------------------------------------------------- admins


async def test_admins_without_a_recent_second_factor(w: World) -> None:
    for name in ("boss", "lazy", "edge", "never", "keyed", "late.code", "webonly", "off", "gone",
                 "gone2"):
        await w.create(name, "admin")
    await w.create("nurse")  # not an admin: never listed here
    await w.admin_login("boss", AS_OF - 5 * DAY)
    await w.admin_login("lazy", AS_OF - 40 * DAY)
    await w.admin_login("edge", AS_OF - 30 * DAY)  # exactly 30 days: listed
    await w.admin_login("keyed", AS_OF - 60 * DAY)
    await w.x_totp("keyed", AS_OF - 3 * DAY)  # a code on an API-key call counts
    await w.admin_login("late.code", AS_OF - 60 * DAY)
    await w.x_totp("late.code", AS_OF + 100)  # after the period's end: does not
    await w.web_login("webonly", AS_OF - DAY)  # the chat page takes no second factor
    await w.at(AS_OF - DAY)
    await w.accounts.disable_user("off")
    await w.erase_row("gone", AS_OF - DAY)
    await w.erase_row("gone2", AS_OF - DAY, disabled=False)
    r = await w.report()
    assert r.admins_without_recent_totp == (
        StaleAdmin("edge", "local", True, AS_OF - 30 * DAY, 30),
        StaleAdmin("late.code", "local", True, AS_OF - 60 * DAY, 60),
        StaleAdmin("lazy", "local", True, AS_OF - 40 * DAY, 40),
        StaleAdmin("never", "local", True, None, None),
        StaleAdmin("webonly", "local", True, None, None),
    )
    assert r.admin_totp_days == 30
    assert "webonly" not in [d.user for d in r.dormant]  # it did sign in


async def test_a_reset_second_factor_was_never_used(w: World) -> None:
    await w.create("boss", "admin")
    await w.x_totp("boss", AS_OF - DAY)
    w.clock.now = AS_OF - DAY + 60
    await w.accounts.reset_totp("boss")  # the new factor has not been used
    assert [(a.user, a.last_second_factor_at) for a in (await w.report()).admins_without_recent_totp
            ] == [("boss", None)]


# --------------------------------------------------------------------------- the request


async def test_days_are_those_of_the_time_zone(w: World) -> None:
    berlin = AccessReview(w.db, w.audit, AuditSettings(), "Europe/Berlin", w.clock)
    await w.create("boss", "admin")
    boss = await w.who("boss")
    midnight = dt.datetime(2026, 5, 1, tzinfo=dt.UTC).timestamp() - 2 * 3600  # CEST
    await w.append(midnight - 1, boss, "user.export", target="user:a")  # 30 April there
    await w.append(midnight, boss, "user.export", target="user:b")
    w.clock.now = NOW
    r = await berlin.report(FIRST, LAST, by=None)
    assert (r.since, r.timezone) == (midnight, "Europe/Berlin")
    assert [a.target for a in r.data_access] == ["user:b"]


@pytest.mark.parametrize(("first", "last", "days", "field"), [
    ("2026-5-01", LAST, None, "from"),
    ("2026-02-30", LAST, None, "from"),
    (FIRST, "yesterday", None, "to"),
    (LAST, FIRST, None, "from"),  # reversed
    ("2025-01-01", LAST, None, "from"),  # over 366 days
    (FIRST, LAST, "0", "dormant_days"),
    (FIRST, LAST, "3651", "dormant_days"),
    (FIRST, LAST, "9x", "dormant_days"),
    (FIRST, LAST, "-5", "dormant_days"),
    (FIRST, LAST, True, "dormant_days"),
])
async def test_bad_requests_name_the_field(w: World, first: str, last: str, days: object,
                                           field: str) -> None:
    with pytest.raises(Invalid) as bad:
        await w.review.report(first, last, days, by=None)
    assert bad.value.field == field
    assert await w.audit.query(action="report.access") == []  # refused: not a report


async def test_the_default_period_is_the_last_30_days(w: World) -> None:
    w.clock.now = NOW
    r = await w.review.report(None, None, by=None)
    assert (r.first, r.last) == ("2026-04-21", "2026-05-20")


async def test_each_report_is_audited(w: World) -> None:
    await w.create("dpo", "auditor")
    dpo = replace(await w.who("dpo"), via="web_session")
    w.clock.now = NOW
    await w.review.report(FIRST, LAST, "45", by=dpo, fmt="csv")
    [ev] = await w.audit.query(action="report.access")
    assert (ev["actor"], ev["role"], ev["client"], ev["at"]) == ("dpo", "auditor", SRC, NOW)
    assert ev["detail"] == (
        '{"dormant_days": 45, "format": "csv", "from": "2026-05-01", "to": "2026-05-19"}'
    )
    assert (await w.audit.verify()).ok
