"""GET /audit/api/access-review against the real app: who may read it (auditors only), the
report of real sign-ins, a real export and erasure by an admin, and dormant accounts, as JSON
and as CSV; bad from/to/dormant_days/format are 400s naming the parameter; every report is
audited (report.access), refused ones are not."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass
from typing import Any

import pytest

from deepseekd.domain.audit import Event
from deepseekd.http.state import ACCOUNTS, AUDIT, AUTH
from tests.api.helpers import bearer, code, error, login, ok_json, secret_of

MakeDaemon = Any  # tests/api/conftest.py
FakeClock = Any
REVIEW = "/audit/api/access-review"
DAY = 86400
NOW = dt.datetime(2026, 3, 10, 12, tzinfo=dt.UTC).timestamp()
OLD = NOW - 200 * DAY
PERIOD = "?from=2026-03-01&to=2026-03-10"


@dataclass
class Box:
    d: Any
    clock: FakeClock
    keys: dict[str, str]
    """API keys by user name."""
    passwords: dict[str, str]
    root_secret: str

    async def get(self, query: str = PERIOD, who: str = "dpo", **headers: str) -> Any:
        return await self.d.client.get(REVIEW + query, headers={**bearer(self.keys[who]),
                                                                **headers})

    async def report(self, query: str = PERIOD) -> dict[str, Any]:
        return await ok_json(await self.get(query))

    async def reports_audited(self) -> list[dict[str, Any]]:
        return await self.d.app[AUDIT].query(action="report.access")


@pytest.fixture
async def box(make_daemon: MakeDaemon, clock: FakeClock) -> Box:
    clock.now = OLD  # every account below (and make_daemon's "tester") is 200 days old
    d = await make_daemon(clock=clock)
    accounts = d.app[ACCOUNTS]
    keys, passwords = {"tester": d.key}, {}
    root_secret = ""
    for name, role in [("root", "admin"), ("lazy", "admin"), ("dpo", "auditor"),
                       ("nurse", "user"), ("idle", "user"), ("leaver", "user")]:
        new = await accounts.create_user(name, role)
        keys[name], passwords[name] = new.api_key, new.password or ""
        if name == "root":
            assert new.totp_uri
            root_secret = secret_of(new.totp_uri)
    clock.now = NOW - 2 * DAY
    session = await login(d.client, "root", passwords["root"], root_secret, clock)
    box = Box(d, clock, keys, passwords, root_secret)
    # nurse signs in on the chat page once, and once with a wrong password.
    ok = await d.client.post("/auth/login", json={"username": "nurse",
                                                  "password": passwords["nurse"]})
    assert ok.status == 200, await ok.text()
    bad = await d.client.post("/auth/login", json={"username": "nurse",
                                                   "password": "not-her-password"})
    assert bad.status == 401
    d.client.session.cookie_jar.clear()
    # root exports nurse's data and erases leaver, through the admin API.
    await ok_json(await d.client.get("/admin/api/users/nurse/export", headers=bearer(session)))
    await ok_json(await d.client.post("/admin/api/users/leaver/erase", headers=bearer(session)))
    clock.now = NOW
    return box


def _row(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, rows)
    return found[0]


async def test_the_report_of_a_period(box: Box) -> None:
    r = await box.report()
    assert (r["object"], r["from"], r["to"], r["timezone"]) == (
        "access_review", "2026-03-01", "2026-03-10", "UTC")
    assert (r["as_of"], r["dormant_days"], r["admin_totp_days"]) == (NOW, 90, 30)
    t = NOW - 2 * DAY
    export = _row(r["data_access"], action="user.export")
    assert export == {"actor": "root", "role": "admin", "action": "user.export",
                      "target": "user:nurse", "outcome": "ok", "count": 1, "first_at": t,
                      "last_at": t}
    assert _row(r["data_access"], action="user.erase")["target"] == "user:leaver"
    assert {a["role"] for a in r["data_access"]} == {"admin"}  # no sign-in, no CLI here
    assert r["sign_ins"] == [
        {"user": "nurse", "role": "user", "succeeded": 1, "failed": 1, "last_success_at": t,
         "last_failure_at": t},
        {"user": "root", "role": "admin", "succeeded": 1, "failed": 0, "last_success_at": t,
         "last_failure_at": None},
    ]
    # Never signed in for 200 days (API keys do not count); leaver is erased; nurse and
    # root signed in.
    assert [(x["user"], x["days"], x["last_sign_in_at"]) for x in r["dormant"]] == [
        ("dpo", 200, None), ("idle", 200, None), ("lazy", 200, None), ("tester", 200, None)]
    assert r["admins_without_recent_totp"] == [
        {"user": "lazy", "source": "local", "totp_enrolled": True,
         "last_second_factor_at": None, "days": None}]
    assert r["summary"]["sign_ins_failed"] == 1 and r["summary"]["dormant"] == 4
    # Another threshold for this report: 201 days leaves no one dormant.
    assert (await box.report(PERIOD + "&dormant_days=201"))["dormant"] == []


async def test_csv_one_sheet_of_blocks(box: Box) -> None:
    # A target a spreadsheet would run as a formula is shown, not run.
    root = await box.d.app[AUTH].authenticate_key(box.keys["root"])
    await box.d.app[AUDIT].append(Event.by(root, "settings.change", target="=1+2"))
    for resp in (await box.get(PERIOD + "&format=csv"),
                 await box.get(PERIOD, Accept="text/csv")):
        text = await resp.text()
        assert resp.status == 200, text
        assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
        assert resp.headers["Content-Disposition"] == (
            'attachment; filename="access-review-2026-03-01-2026-03-10.csv"')
        blocks = [list(csv.reader(io.StringIO(b))) for b in text.split("\r\n\r\n")]
        assert [b[0][0] for b in blocks] == ["section"] * 5
        assert [b[1][0] for b in blocks if len(b) > 1] == [
            "report", "data_access", "sign_ins", "dormant", "admins_without_recent_totp"]
        report, access, sign_ins, dormant, admins = blocks
        assert report[1][:7] == ["report", "2026-03-01", "2026-03-10", "UTC",
                                 "2026-03-10 12:00:00", "90", "30"]
        assert ["data_access", "root", "admin", "user.export", "user:nurse", "ok", "1",
                "2026-03-08 12:00:00", "2026-03-08 12:00:00"] in access
        assert ["data_access", "root", "admin", "settings.change", "'=1+2", "ok", "1",
                "2026-03-10 12:00:00", "2026-03-10 12:00:00"] in access
        assert sign_ins[0] == ["section", "user", "role", "succeeded", "failed",
                               "last_success", "last_failure"]
        assert ["sign_ins", "nurse", "user", "1", "1", "2026-03-08 12:00:00",
                "2026-03-08 12:00:00"] in sign_ins
        assert ["dormant", "idle", "user", "local", "2025-08-22 12:00:00", "", "200",
                "1"] in dormant
        assert admins[1:] == [["admins_without_recent_totp", "lazy", "local", "yes", "", ""]]
    # The JSON keeps the text as it is.
    assert _row((await box.report())["data_access"], action="settings.change")["target"] == "=1+2"


async def test_only_auditors_read_it(box: Box) -> None:
    assert (await box.get()).status == 200
    await error(await box.d.client.get(REVIEW), 401)
    for who in ("tester", "lazy"):  # a user; an admin with its key
        await error(await box.get(who=who), 403, "forbidden")
    totp = code(box.root_secret, box.clock())
    await error(await box.get(who="root", **{"X-TOTP": totp}), 403, "forbidden")
    box.clock.advance(30)  # the next code: each is accepted once
    session = await login(box.d.client, "root", box.passwords["root"], box.root_secret, box.clock)
    resp = await box.d.client.get(REVIEW, headers=bearer(session))  # an admin session
    await error(resp, 403, "forbidden")
    # The console's auditor view: a browser session (cookie), no second factor.
    signed = await box.d.client.post("/auth/login", json={"username": "dpo",
                                                          "password": box.passwords["dpo"]})
    assert signed.status == 200
    await ok_json(await box.d.client.get(REVIEW + PERIOD))
    assert [e["actor"] for e in await box.reports_audited()] == ["dpo", "dpo"]


@pytest.mark.parametrize(("query", "param"), [
    ("?from=2026-3-01", "from"),
    ("?from=2026-02-30&to=2026-03-10", "from"),
    ("?to=tomorrow", "to"),
    ("?from=2026-03-10&to=2026-03-01", "from"),
    ("?from=2025-01-01&to=2026-03-10", "from"),  # over 366 days
    ("?dormant_days=0", "dormant_days"),
    ("?dormant_days=3651", "dormant_days"),
    ("?dormant_days=ninety", "dormant_days"),
    ("?dormant_days=-1", "dormant_days"),
    ("?format=xml", "format"),
])
async def test_bad_parameters_are_400_naming_them(box: Box, query: str, param: str) -> None:
    await error(await box.get(query), 400, param=param)
    assert await box.reports_audited() == []


async def test_each_report_is_audited(box: Box) -> None:
    await box.report()
    await box.get(PERIOD + "&format=csv&dormant_days=45")
    events = await box.reports_audited()
    assert [(e["actor"], e["role"], e["outcome"], json.loads(e["detail"])) for e in events] == [
        ("dpo", "auditor", "ok",
         {"from": "2026-03-01", "to": "2026-03-10", "dormant_days": 90, "format": "json"}),
        ("dpo", "auditor", "ok",
         {"from": "2026-03-01", "to": "2026-03-10", "dormant_days": 45, "format": "csv"}),
    ]
    # The default period: the last 30 days ending today.
    r = await box.report("")
    assert (r["from"], r["to"]) == ("2026-02-09", "2026-03-10")
