"""GET /admin/api/usage/summary: the console's usage charts. Requests and tokens per quota
day (every day of the range, zeros included), the top users, and the inference requests that
failed or were refused per day, counted from the audit log; the group filter; the reading
itself audited. The people and counts are test_admin_usage's."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deepseekd.domain.audit import Event
from deepseekd.http.state import ACCOUNTS, AUDIT, DATABASE
from deepseekd.store import accounts as accounts_repo
from deepseekd.store import usage as usage_repo
from tests.api.helpers import CHAT, CHAT_BODY, bearer, error, login, ok_json, secret_of
from tests.api.test_admin_usage import Box, seed, utc

MakeDaemon = Any
FakeClock = Any
SUMMARY = "/admin/api/usage/summary"


@pytest.fixture
async def box(make_daemon: MakeDaemon, clock: FakeClock) -> Box:
    """test_admin_usage's people and counts; an admin session; today is 2025-03-10 (UTC)."""
    clock.now = utc(2025, 3, 10, 12)
    d = await make_daemon(clock=clock)
    root = await d.app[ACCOUNTS].create_user("root", "admin")
    assert root.password and root.totp_uri
    await seed(d)
    return Box(d, await login(d.client, "root", root.password, secret_of(root.totp_uri), clock))


async def summary(b: Box, query: str = "") -> dict[str, Any]:
    return await ok_json(await b.d.client.get(SUMMARY + query, headers=bearer(b.token)))


def day(d: str, requests: int, tokens: int, reasoning: int, users: int, failed: int = 0,
        refused: int = 0) -> dict[str, Any]:
    return {"day": d, "requests": requests, "tokens": tokens, "reasoning_tokens": reasoning,
            "users": users, "failed": failed, "refused": refused}


async def failure(b: Box, clock: FakeClock, at: float, name: str | None, action: str,
                  outcome: str) -> None:
    """An inference request's closing event, as services/chat writes it, at ``at``."""
    user = await b.d.app[DATABASE].read(
        "test.user", lambda s: accounts_repo.user_by_name(s, name)) if name else None
    was, clock.now = clock.now, at
    try:
        await b.d.app[AUDIT].append(Event(
            action=action, outcome=outcome, actor=name, role="user" if name else "service",
            actor_id=user.id if user else None, detail="EngineUnavailable"))
    finally:
        clock.now = was


async def test_per_day_counts_every_day_once_per_user(box: Box) -> None:
    got = await summary(box, "?from=2025-03-07&to=2025-03-10")
    assert (got["object"], got["from"], got["to"], got["group"]) == (
        "usage.summary", "2025-03-07", "2025-03-10", None)
    # alice is in two groups but counts once a day here (unlike the per-group report).
    assert got["days"] == [
        day("2025-03-07", 0, 0, 0, 0),
        day("2025-03-08", 5, 130, 10, 2),  # alice 2, bob 3
        day("2025-03-09", 5, 45, 4, 2),  # bob 1, carol 4
        day("2025-03-10", 3, 58, 0, 3),  # alice, eve, tester
    ]
    assert got["totals"] == {"requests": 13, "tokens": 233, "reasoning_tokens": 14, "users": 5,
                             "failed": 0, "refused": 0}


async def test_top_users_most_requests_first(box: Box) -> None:
    got = await summary(box, "?from=2025-03-08&to=2025-03-10")
    top = [(u["name"], u["requests"], u["tokens"]) for u in got["top_users"]]
    # carol and bob tie on requests: more tokens first; so do tester and eve.
    assert top == [("carol", 4, 40), ("bob", 4, 35), ("alice", 3, 150), ("tester", 1, 7),
                   ("eve", 1, 1)]
    assert set(got["top_users"][0]) == {"name", "requests", "tokens", "reasoning_tokens",
                                        "failed", "refused"}


async def test_at_most_ten_top_users(box: Box) -> None:
    for i in range(12):
        await box.d.app[ACCOUNTS].create_user(f"extra{i:02}", "user")

    def write(s: Any) -> None:
        for i in range(12):
            user = accounts_repo.user_by_name(s, f"extra{i:02}")
            assert user is not None
            for _ in range(10 + i):  # extra11 the most
                usage_repo.count_request(s, user.id, "2025-03-09", 1000, 0)

    await box.d.app[DATABASE].write("test.extra", write)
    got = await summary(box, "?from=2025-03-08&to=2025-03-10")
    assert [u["name"] for u in got["top_users"]] == [f"extra{i:02}" for i in range(11, 1, -1)]
    assert got["totals"]["users"] == 17 and got["totals"]["requests"] == 13 + sum(range(10, 22))


async def test_failures_and_refusals_per_day(box: Box, clock: FakeClock) -> None:
    await failure(box, clock, utc(2025, 3, 9, 8), "bob", "inference", "error")
    await failure(box, clock, utc(2025, 3, 9, 23, 59), "carol", "inference.completion", "error")
    await failure(box, clock, utc(2025, 3, 10, 0, 0), "carol", "inference.refused", "denied")
    await failure(box, clock, utc(2025, 3, 10, 1), None, "inference", "error")  # no actor
    # Not an inference request's failure: not counted.
    await failure(box, clock, utc(2025, 3, 10, 2), "bob", "admin.login", "denied")
    await failure(box, clock, utc(2025, 3, 10, 3), "bob", "inference", "ok")
    await failure(box, clock, utc(2025, 3, 11, 0, 0, 1), "bob", "inference", "error")  # later
    await failure(box, clock, utc(2025, 3, 8, 23, 59, 59), "bob", "inference", "error")  # before
    # A real refusal: the daily quota of a user whose limit is 0.
    await box.d.app[ACCOUNTS].set_limits("tester", daily_request_limit=0)
    await error(await box.d.client.post(CHAT, json=CHAT_BODY, headers=box.d.auth), 429,
                "daily_quota_exceeded")
    got = await summary(box, "?from=2025-03-09&to=2025-03-10")
    per_day = {d["day"]: (d["failed"], d["refused"]) for d in got["days"]}
    assert per_day == {"2025-03-09": (2, 0), "2025-03-10": (1, 2)}
    assert (got["totals"]["failed"], got["totals"]["refused"]) == (3, 2)
    users = {u["name"]: (u["failed"], u["refused"]) for u in got["top_users"]}
    assert users["bob"] == (1, 0) and users["carol"] == (1, 1) and users["tester"] == (0, 1)
    # The group filter applies to failures too: carol is in no group, bob in Cardiology.
    cardio = await summary(box, "?from=2025-03-09&to=2025-03-10&group=CARDIOLOGY")
    assert (cardio["totals"]["failed"], cardio["totals"]["refused"]) == (1, 0)


async def test_group_filter(box: Box) -> None:
    got = await summary(box, "?from=2025-03-08&to=2025-03-10&group=cardiology")
    assert got["group"] == "cardiology"
    assert [u["name"] for u in got["top_users"]] == ["bob", "alice"]
    assert [d["requests"] for d in got["days"]] == [5, 1, 1]
    none = await summary(box, "?from=2025-03-08&to=2025-03-10&group=(no group)")
    assert [u["name"] for u in none["top_users"]] == ["carol", "tester"]


async def test_bad_queries_name_the_field(box: Box) -> None:
    h = bearer(box.token)
    for query, param in (("?from=2025-3-1", "from"), ("?to=2025-02-30", "to"),
                         ("?from=2025-03-10&to=2025-03-01", "from"),
                         ("?from=2023-01-01&to=2025-03-10", "from"),
                         ("?group=" + "x" * 300, "group")):
        await error(await box.d.client.get(SUMMARY + query, headers=h), 400, param=param)


async def test_reading_it_is_audited(box: Box) -> None:
    head, _ = await box.d.app[AUDIT].head()
    await summary(box, "?from=2025-03-08&to=2025-03-10&group=Radiology")
    await box.d.client.get(SUMMARY + "?from=nope", headers=bearer(box.token))  # nothing read
    events = await box.d.app[AUDIT].query(after_id=head, limit=100)
    assert [(e["action"], e["actor"], e["outcome"]) for e in events] == [
        ("usage.report", "root", "ok")]
    assert json.loads(events[0]["detail"]) == {"from": "2025-03-08", "to": "2025-03-10",
                                               "group": "Radiology", "summary": True}


async def test_only_admins(box: Box) -> None:
    await error(await box.d.client.get(SUMMARY, headers=box.d.auth), 403, "forbidden")
