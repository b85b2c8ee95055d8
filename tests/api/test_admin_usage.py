"""GET /admin/api/usage: requests and tokens per directory group and day (JSON and CSV), and
the source and groups of each user in /admin/api/users."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass
from typing import Any

import pytest

from deepseekd.http.state import ACCOUNTS, AUDIT, DATABASE
from deepseekd.store import accounts as accounts_repo
from deepseekd.store import usage as usage_repo
from tests.api.helpers import bearer, error, login, ok_json, secret_of

MakeDaemon = Any  # tests/api/conftest.py: async (engine=, env=, ready=, clock=) -> Daemon
FakeClock = Any
USAGE = "/admin/api/usage"
TODAY = "2025-03-10"

# name: (source, groups as stored, {day: (requests, tokens, reasoning tokens)})
PEOPLE: dict[str, tuple[str, str | None, dict[str, tuple[int, int, int]]]] = {
    "alice": ("ldap", "Cardiology\nRadiology", {"2025-03-08": (2, 100, 10),
                                                "2025-03-10": (1, 50, 0),
                                                "2025-02-01": (9, 90, 0)}),
    "bob": ("ldap", "cardiology\n", {"2025-03-08": (3, 30, 0), "2025-03-09": (1, 5, 0)}),
    "carol": ("oidc", None, {"2025-03-09": (4, 40, 4)}),
    "eve": ("ldap", "=2+5\n@SUM(A1)", {"2025-03-10": (1, 1, 0)}),
    "tester": ("local", None, {"2025-03-10": (1, 7, 0)}),  # make_daemon's user
}


def row(group: str, day: str, requests: int, tokens: int, reasoning: int, users: int
        ) -> dict[str, Any]:
    return {"group": group, "day": day, "requests": requests, "tokens": tokens,
            "reasoning_tokens": reasoning, "users": users}


EXPECTED = [  # 2025-03-08 .. 2025-03-10, by group (case-insensitively) then day
    row("(no group)", "2025-03-09", 4, 40, 4, 1),
    row("(no group)", "2025-03-10", 1, 7, 0, 1),
    row("=2+5", "2025-03-10", 1, 1, 0, 1),
    row("@SUM(A1)", "2025-03-10", 1, 1, 0, 1),
    row("Cardiology", "2025-03-08", 5, 130, 10, 2),  # alice and bob ("cardiology")
    row("Cardiology", "2025-03-09", 1, 5, 0, 1),
    row("Cardiology", "2025-03-10", 1, 50, 0, 1),
    row("Radiology", "2025-03-08", 2, 100, 10, 1),  # alice again: she is in both
    row("Radiology", "2025-03-10", 1, 50, 0, 1),
]


@dataclass
class Box:
    d: Any
    token: str
    """An admin session (bearer)."""

    async def get(self, query: str = "", headers: dict[str, str] | None = None) -> Any:
        return await self.d.client.get(USAGE + query, headers={**bearer(self.token),
                                                               **(headers or {})})

    async def report(self, query: str = "") -> dict[str, Any]:
        return await ok_json(await self.get(query))


def utc(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()


async def seed(d: Any) -> None:
    """The people above, with their groups and daily counts, written through the store."""
    for name in PEOPLE:
        if name != "tester":
            await d.app[ACCOUNTS].create_user(name, "user")

    def write(s: Any) -> None:
        for name, (source, groups, days) in PEOPLE.items():
            user = accounts_repo.user_by_name(s, name)
            assert user is not None
            user.source, user.groups = source, groups
            for day, (requests, tokens, reasoning) in days.items():
                for _ in range(requests):
                    usage_repo.count_request(s, user.id, day, 1000, 0)
                usage_repo.add_tokens(s, user.id, day, tokens, reasoning)

    await d.app[DATABASE].write("test.seed", write)


@pytest.fixture
async def box(make_daemon: MakeDaemon, clock: FakeClock) -> Box:
    clock.now = utc(2025, 3, 10, 12)
    d = await make_daemon(clock=clock)
    root = await d.app[ACCOUNTS].create_user("root", "admin")
    assert root.password and root.totp_uri
    await seed(d)
    token = await login(d.client, "root", root.password, secret_of(root.totp_uri), clock)
    return Box(d, token)


# --------------------------------------------------------------------------- JSON


async def test_usage_per_group_and_day(box: Box) -> None:
    got = await box.report("?from=2025-03-08&to=2025-03-10")
    assert set(got) == {"object", "from", "to", "data", "totals"}
    assert (got["object"], got["from"], got["to"]) == ("list", "2025-03-08", "2025-03-10")
    assert got["data"] == EXPECTED
    totals = {t["group"]: t for t in got["totals"]}
    assert [t["group"] for t in got["totals"]] == ["(no group)", "=2+5", "@SUM(A1)",
                                                   "Cardiology", "Radiology"]
    assert totals["Cardiology"] == {"group": "Cardiology", "requests": 7, "tokens": 185,
                                    "reasoning_tokens": 10, "users": 2}
    assert totals["Radiology"] == {"group": "Radiology", "requests": 3, "tokens": 150,
                                   "reasoning_tokens": 10, "users": 1}
    # carol (OIDC, no groups) and tester (a local account) are both "(no group)".
    assert totals["(no group)"] == {"group": "(no group)", "requests": 5, "tokens": 47,
                                    "reasoning_tokens": 4, "users": 2}


async def test_the_default_range_is_the_last_30_days(box: Box) -> None:
    got = await box.report()
    assert (got["from"], got["to"]) == ("2025-02-09", TODAY)
    assert got["data"] == EXPECTED  # alice's 2025-02-01 is outside
    older = await box.report("?from=2025-02-01")
    assert (older["from"], older["to"]) == ("2025-02-01", TODAY)
    assert row("Cardiology", "2025-02-01", 9, 90, 0, 1) in older["data"]
    assert row("Radiology", "2025-02-01", 9, 90, 0, 1) in older["data"]
    assert len(older["data"]) == len(EXPECTED) + 2
    ending = await box.report("?to=2025-03-09")
    assert (ending["from"], ending["to"]) == ("2025-02-08", "2025-03-09")
    assert all(r["day"] <= "2025-03-09" for r in ending["data"])


async def test_from_and_to_bound_the_days(box: Box) -> None:
    got = await box.report("?from=2025-03-09&to=2025-03-09")
    # Only bob was active in Cardiology that day: the group has his spelling.
    assert got["data"] == [row("(no group)", "2025-03-09", 4, 40, 4, 1),
                           row("cardiology", "2025-03-09", 1, 5, 0, 1)]
    got = await box.report("?from=2025-03-11&to=2025-03-20")
    assert got["data"] == [] and got["totals"] == []
    # 366 days inclusive is the most one report covers.
    assert (await box.get("?from=2024-03-10&to=2025-03-10")).status == 200


async def test_the_group_filter_is_case_insensitive(box: Box) -> None:
    for spelled in ("Cardiology", "CARDIOLOGY", " cardiology "):
        got = await box.report(f"?from=2025-03-08&to=2025-03-10&group={spelled}")
        assert got["data"] == [r for r in EXPECTED if r["group"] == "Cardiology"], spelled
        assert [t["group"] for t in got["totals"]] == ["Cardiology"]
    got = await box.report("?from=2025-03-08&to=2025-03-10&group=(No%20Group)")
    assert got["data"] == [r for r in EXPECTED if r["group"] == "(no group)"]
    got = await box.report("?group=Oncology")
    assert got["data"] == [] and got["totals"] == []


async def test_groups_are_the_users_current_ones(box: Box) -> None:
    def move(s: Any) -> None:
        user = accounts_repo.user_by_name(s, "bob")
        assert user is not None
        user.groups = "Oncology"

    await box.d.app[DATABASE].write("test.move", move)
    got = await box.report("?from=2025-03-08&to=2025-03-10")
    totals = {t["group"]: t for t in got["totals"]}
    assert totals["Oncology"]["requests"] == 4  # bob's past days count in his new group
    assert totals["Cardiology"]["requests"] == 3


# --------------------------------------------------------------------------- CSV


async def test_csv_download(box: Box) -> None:
    resp = await box.get("?from=2025-03-08&to=2025-03-10&format=csv")
    text = await resp.text()
    assert resp.status == 200, text
    assert resp.content_type == "text/csv" and resp.charset == "utf-8"
    assert resp.headers["Content-Disposition"] == (
        'attachment; filename="usage-2025-03-08-2025-03-10.csv"')
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == ["group", "day", "requests", "tokens", "reasoning_tokens", "users"]
    assert len(lines) == 1 + len(EXPECTED)
    cardiology = [r for r in lines if r[0] == "Cardiology"]
    assert cardiology[0] == ["Cardiology", "2025-03-08", "5", "130", "10", "2"]
    # Names a spreadsheet would run as formulas are quoted with an apostrophe.
    assert [r[0] for r in lines[1:]] == [
        "(no group)", "(no group)", "'=2+5", "'@SUM(A1)", "Cardiology", "Cardiology",
        "Cardiology", "Radiology", "Radiology"]
    assert not any(r[0][:1] in "=+-@" for r in lines[1:])


async def test_accept_text_csv_also_asks_for_csv(box: Box) -> None:
    resp = await box.get("?from=2025-03-09&to=2025-03-09", headers={"Accept": "text/csv"})
    assert resp.content_type == "text/csv"
    assert (await resp.text()).splitlines()[1] == "(no group),2025-03-09,4,40,4,1"
    resp = await box.get("?format=json", headers={"Accept": "text/csv"})
    assert (await ok_json(resp))["object"] == "list"  # an explicit format wins


async def test_csv_of_the_group_filter_and_of_nothing(box: Box) -> None:
    resp = await box.get("?from=2025-03-08&to=2025-03-10&group=radiology&format=csv")
    assert (await resp.text()).splitlines() == [
        "group,day,requests,tokens,reasoning_tokens,users",
        "Radiology,2025-03-08,2,100,10,1",
        "Radiology,2025-03-10,1,50,0,1",
    ]
    resp = await box.get("?from=2025-01-01&to=2025-01-02&format=csv")
    assert (await resp.text()).splitlines() == ["group,day,requests,tokens,reasoning_tokens,users"]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("query", "param"), [
    ("?from=2025-13-01", "from"),
    ("?from=2025-02-30&to=2025-03-01", "from"),
    ("?from=yesterday", "from"),
    ("?from=20250301", "from"),
    ("?to=2025-3-1", "to"),
    ("?to=2025-03-10T00:00", "to"),
    ("?from=2025-03-10&to=2025-03-08", "from"),
    ("?from=2024-03-09&to=2025-03-10", "from"),  # 367 days
    ("?from=2025-03-20", "from"),  # after today, the default end
    ("?format=xml", "format"),
    ("?group=" + "x" * 257, "group"),
])
async def test_bad_queries_are_400_naming_the_field(box: Box, query: str, param: str) -> None:
    err = await error(await box.get(query), 400, "invalid_value", param)
    assert err["message"].startswith(param + ":")


async def test_only_admins_read_it(box: Box) -> None:
    d = box.d
    await error(await d.client.get(USAGE), 401)
    await error(await d.client.get(USAGE, headers=d.auth), 403)  # a chat user
    auditor = await d.app[ACCOUNTS].create_user("aud", "auditor")
    await error(await d.client.get(USAGE, headers=bearer(auditor.api_key)), 403)
    await error(await d.client.get(USAGE + "?format=csv", headers=d.auth), 403)


async def test_each_report_is_audited(box: Box) -> None:
    head, _ = await box.d.app[AUDIT].head()
    await box.report("?from=2025-03-08&to=2025-03-10&group=Radiology")
    await box.get("?format=csv")
    await box.get("?from=nope")  # refused: nothing read, nothing recorded
    events = await box.d.app[AUDIT].query(after_id=head, limit=100)
    assert [(e["action"], e["actor"], e["outcome"]) for e in events] == [
        ("usage.report", "root", "ok"), ("usage.report", "root", "ok")]
    assert json.loads(events[0]["detail"]) == {"from": "2025-03-08", "to": "2025-03-10",
                                               "group": "Radiology", "csv": False}
    assert json.loads(events[1]["detail"]) == {"from": "2025-02-09", "to": TODAY,
                                               "group": None, "csv": True}


# --------------------------------------------------------------------------- users


async def test_users_list_shows_source_and_groups(box: Box) -> None:
    got = await ok_json(await box.d.client.get("/admin/api/users", headers=bearer(box.token)))
    users = {u["name"]: u for u in got["users"]}
    assert (users["alice"]["source"], users["alice"]["groups"]) == (
        "ldap", ["Cardiology", "Radiology"])
    assert (users["bob"]["source"], users["bob"]["groups"]) == ("ldap", ["cardiology"])
    assert (users["carol"]["source"], users["carol"]["groups"]) == ("oidc", [])
    assert (users["root"]["source"], users["root"]["groups"]) == ("local", [])
