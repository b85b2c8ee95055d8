"""The console's Users view over HTTP: search in names and groups, sort on every column it
offers, pages with a total, the last sign-in (after a real one) and today's counts (after a
real request), and 400 naming the field for a bad parameter."""

from __future__ import annotations

from typing import Any

import pytest

from deepseekd.http.state import ACCOUNTS, DATABASE
from deepseekd.store import accounts as accounts_repo

from tests.api.helpers import CHAT, CHAT_BODY, bearer, error, login, ok_json, secret_of

MakeDaemon = Any
FakeClock = Any

USERS = "/admin/api/users"


async def _world(make_daemon: MakeDaemon, clock: FakeClock) -> tuple[Any, str, dict[str, Any]]:
    d = await make_daemon(clock=clock)
    accounts = d.app[ACCOUNTS]
    root = await accounts.create_user("root", "admin")
    made = {"root": root}
    for name, role in (("alice", "user"), ("bob", "auditor"), ("carol", "user"),
                       ("dave", "user"), ("erin", "auditor")):
        clock.advance(10)
        made[name] = await accounts.create_user(name, role)

    def groups(s: Any) -> None:
        user = accounts_repo.user_by_name(s, "dave")
        assert user is not None
        user.groups = "Radiology\nNights"

    await d.app[DATABASE].write("test.groups", groups)
    assert root.password and root.totp_uri
    token = await login(d.client, "root", root.password, secret_of(root.totp_uri), clock)
    return d, token, made


async def _get(d: Any, token: str, query: str = "") -> dict[str, Any]:
    body: dict[str, Any] = await ok_json(await d.client.get(USERS + query, headers=bearer(token)))
    return body


def _names(body: dict[str, Any]) -> list[str]:
    return [u["name"] for u in body["users"]]


async def test_the_plain_call_lists_everyone_as_before(make_daemon: MakeDaemon,
                                                       clock: FakeClock) -> None:
    d, token, _ = await _world(make_daemon, clock)
    body = await _get(d, token)
    assert _names(body) == ["alice", "bob", "carol", "dave", "erin", "root", "tester"]
    assert body["total"] == 7 and body["limit"] is None and body["offset"] == 0
    first = body["users"][0]
    for old in ("name", "role", "disabled", "locked", "created_at", "active_keys", "groups"):
        assert old in first
    assert first["last_login_at"] is None
    assert first["requests_today"] == 0 and first["tokens_today"] == 0


async def test_search_in_names_and_groups(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d, token, _ = await _world(make_daemon, clock)
    assert _names(await _get(d, token, "?q=AL")) == ["alice"]
    assert _names(await _get(d, token, "?q=radio")) == ["dave"]  # a group, any case
    assert _names(await _get(d, token, "?q=r")) == ["carol", "dave", "erin", "root", "tester"]
    nothing = await _get(d, token, "?q=zzz")
    assert nothing["users"] == [] and nothing["total"] == 0


async def test_sort_and_order(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d, token, _ = await _world(make_daemon, clock)
    assert _names(await _get(d, token, "?sort=name&order=desc"))[:2] == ["tester", "root"]
    by_role = await _get(d, token, "?sort=role")
    assert [(u["role"], u["name"]) for u in by_role["users"]] == [
        ("admin", "root"), ("auditor", "bob"), ("auditor", "erin"),
        ("user", "alice"), ("user", "carol"), ("user", "dave"), ("user", "tester")]
    assert _names(await _get(d, token, "?sort=created_at&order=desc"))[:5] == [
        "erin", "dave", "carol", "bob", "alice"]


async def test_pages_with_a_total(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d, token, _ = await _world(make_daemon, clock)
    first = await _get(d, token, "?limit=2")
    assert _names(first) == ["alice", "bob"]
    assert (first["total"], first["limit"], first["offset"]) == (7, 2, 0)
    assert _names(await _get(d, token, "?limit=2&offset=2")) == ["carol", "dave"]
    last = await _get(d, token, "?limit=4&offset=4")
    assert _names(last) == ["erin", "root", "tester"] and last["total"] == 7
    beyond = await _get(d, token, "?limit=2&offset=50")
    assert beyond["users"] == [] and beyond["total"] == 7
    searched = await _get(d, token, "?q=r&limit=1&offset=1&sort=name")
    assert _names(searched) == ["dave"] and searched["total"] == 5


async def test_last_login_after_a_real_sign_in(make_daemon: MakeDaemon,
                                               clock: FakeClock) -> None:
    d, token, made = await _world(make_daemon, clock)
    clock.advance(100)
    signed_at = clock()
    resp = await d.client.post("/auth/login", json={"username": "carol",
                                                    "password": made["carol"].password})
    await ok_json(resp)
    d.client.session.cookie_jar.clear()
    clock.advance(100)  # a refused sign-in later does not count
    bad = await d.client.post("/auth/login", json={"username": "carol",
                                                   "password": "wrong-password-123"})
    await error(bad, 401)
    body = await _get(d, token, "?sort=last_login&order=desc")
    rows = {u["name"]: u for u in body["users"]}
    assert rows["carol"]["last_login_at"] == pytest.approx(signed_at)
    assert rows["alice"]["last_login_at"] is None
    assert rows["root"]["last_login_at"] is not None  # the admin sign-in of _world
    assert _names(body)[:2] == ["carol", "root"]  # never signed in: last
    oldest_first = await _get(d, token, "?sort=last_login")
    assert _names(oldest_first)[-2:] == ["root", "carol"]


async def test_todays_requests_and_tokens(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d, token, made = await _world(make_daemon, clock)
    for _ in range(2):
        await ok_json(await d.client.post(CHAT, json=CHAT_BODY,
                                          headers=bearer(made["dave"].api_key)))
    await ok_json(await d.client.post(CHAT, json=CHAT_BODY,
                                      headers=bearer(made["carol"].api_key)))
    body = await _get(d, token, "?sort=requests_today&order=desc&limit=3")
    assert _names(body) == ["dave", "carol", "alice"]  # ties (none today) by name
    dave = body["users"][0]
    assert dave["requests_today"] == 2 and dave["tokens_today"] > 0


@pytest.mark.parametrize(("query", "param"), [
    ("?sort=password", "sort"), ("?order=up", "order"), ("?limit=0", "limit"),
    ("?limit=501", "limit"), ("?limit=ten", "limit"), ("?offset=-1", "offset"),
    ("?q=" + "x" * 65, "q"),
])
async def test_bad_parameters_are_400_naming_the_field(make_daemon: MakeDaemon,
                                                       clock: FakeClock, query: str,
                                                       param: str) -> None:
    d, token, _ = await _world(make_daemon, clock)
    await error(await d.client.get(USERS + query, headers=bearer(token)), 400, param=param)


async def test_only_admins(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d, _, made = await _world(make_daemon, clock)
    await error(await d.client.get(USERS + "?q=a", headers=bearer(made["bob"].api_key)), 403)
    await error(await d.client.get(USERS + "?q=a", headers=bearer(made["root"].api_key)), 401)
