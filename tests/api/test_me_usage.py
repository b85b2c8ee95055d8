"""GET /v1/me/usage: the caller's quota for today, read without counting against it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from deepseekd.http.state import ACCOUNTS
from tests.api.helpers import CHAT, CHAT_BODY, bearer, error, ok_json

MakeDaemon = Any  # tests/api/conftest.py: async (engine=, env=, ready=, clock=) -> Daemon
FakeClock = Any
USAGE = "/v1/me/usage"
BERLIN = {"DEEPSEEKD_QUOTA__TIMEZONE": "Europe/Berlin", "DEEPSEEKD_QUOTA__RESET_HOUR": "4"}


def utc(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp())


async def usage_of(d: Any, key: str) -> dict[str, Any]:
    return await ok_json(await d.client.get(USAGE, headers=bearer(key)))


async def chat(d: Any, key: str, content: str) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 3}
    return await ok_json(await d.client.post(CHAT, json=body, headers=bearer(key)))


async def test_a_fresh_user_has_used_nothing(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d = await make_daemon(clock=clock)
    got = await usage_of(d, d.key)
    assert set(got) == {"object", "day", "reset_at", "requests", "tokens"}
    assert got["object"] == "usage"
    assert got["requests"] == {"used": 0, "limit": 500, "remaining": 500}
    assert got["tokens"] == {"used": 0, "limit": None, "remaining": None, "reasoning": 0}
    assert got["day"] == dt.datetime.fromtimestamp(clock(), dt.UTC).date().isoformat()
    assert clock() < got["reset_at"] <= clock() + 86400


async def test_chats_are_counted_and_reading_is_not(make_daemon: MakeDaemon,
                                                    clock: FakeClock) -> None:
    d = await make_daemon(clock=clock)
    first = await chat(d, d.key, "hello there")
    second = await chat(d, d.key, "and a longer question, with more words in it")
    spent = first["usage"]["total_tokens"] + second["usage"]["total_tokens"]
    assert spent > 0
    for _ in range(3):  # reading one's usage is free
        resp = await d.client.get(USAGE, headers=d.auth)
        got = await ok_json(resp)
        assert got["requests"] == {"used": 2, "limit": 500, "remaining": 498}
        assert got["tokens"]["used"] == spent
        assert resp.headers["X-RateLimit-Remaining"] == "498"


async def test_a_token_limit_is_shown_with_its_remainder(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    q = await d.app[ACCOUNTS].create_user("counted", "user", daily_token_limit=1000)
    spent = (await chat(d, q.api_key, "hello there"))["usage"]["total_tokens"]
    got = await usage_of(d, q.api_key)
    assert got["tokens"] == {"used": spent, "limit": 1000, "remaining": 1000 - spent,
                             "reasoning": 0}


async def test_an_exhausted_user_still_reads_the_usage(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    q = await d.app[ACCOUNTS].create_user("quoted", "user", daily_request_limit=2)
    for _ in range(2):
        await ok_json(await d.client.post(CHAT, json=CHAT_BODY, headers=bearer(q.api_key)))
    assert (await usage_of(d, q.api_key))["requests"] == {"used": 2, "limit": 2, "remaining": 0}
    await error(await d.client.post(CHAT, json=CHAT_BODY, headers=bearer(q.api_key)),
                429, "daily_quota_exceeded")
    got = await usage_of(d, q.api_key)  # the refusal cost nothing, the read still answers
    assert got["requests"] == {"used": 2, "limit": 2, "remaining": 0}


async def test_the_day_turns_over_at_the_reset_hour(make_daemon: MakeDaemon,
                                                    clock: FakeClock) -> None:
    clock.now = utc(2025, 1, 15, 2, 30)  # 03:30 in Berlin (CET): still the 14th's quota day
    d = await make_daemon(clock=clock, env=BERLIN)
    await chat(d, d.key, "hello there")
    got = await usage_of(d, d.key)
    assert (got["day"], got["reset_at"]) == ("2025-01-14", utc(2025, 1, 15, 3))
    assert got["requests"]["used"] == 1
    clock.now = utc(2025, 1, 15, 3)  # 04:00 in Berlin
    got = await usage_of(d, d.key)
    assert (got["day"], got["reset_at"]) == ("2025-01-15", utc(2025, 1, 16, 3))
    assert got["requests"]["used"] == 0 and got["tokens"]["used"] == 0


async def test_credentials_are_needed(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    await error(await d.client.get(USAGE), 401, "missing_api_key")
    await error(await d.client.get(USAGE, headers=bearer("dsk-not-a-key")), 401)


async def test_each_user_sees_only_their_own(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    other = await d.app[ACCOUNTS].create_user("other", "user", daily_request_limit=7)
    await chat(d, d.key, "hello there")
    await chat(d, d.key, "hello again")
    mine, theirs = await usage_of(d, d.key), await usage_of(d, other.api_key)
    assert mine["requests"]["used"] == 2 and mine["tokens"]["used"] > 0
    assert theirs["requests"] == {"used": 0, "limit": 7, "remaining": 7}
    assert theirs["tokens"]["used"] == 0
    resp = await d.client.get(f"{USAGE}?user=tester", headers=bearer(other.api_key))
    assert (await ok_json(resp))["requests"]["used"] == 0  # no way to name someone else
