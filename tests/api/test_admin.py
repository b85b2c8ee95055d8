"""The admin API end to end over HTTP: sessions and cookies, users and keys, the X-TOTP
second factor, lockout, idle sessions and input validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from deepseekd.security.apikeys import csrf_token

from deepseekd.http.state import ACCOUNTS
from deepseekd.domain.errors import AuthFailed

from tests.api.helpers import (
    CHAT,
    CHAT_BODY,
    LOGIN,
    bearer,
    code,
    error,
    login,
    ok_json,
    secret_of,
    wrong_code,
)

MakeDaemon = Any  # tests/api/conftest.py: async (engine=, env=, ready=, clock=) -> Daemon
FakeClock = Any  # tests/api/conftest.py: callable, .now, .advance(seconds)

USERS = "/admin/api/users"
MINUTE = 60


@dataclass
class Admin:
    d: Any
    clock: FakeClock
    name: str
    password: str
    secret: str
    key: str

    @property
    def client(self) -> Any:
        return self.d.client

    async def login(self, keep_cookie: bool = False) -> str:
        return await login(self.client, self.name, self.password, self.secret, self.clock,
                           keep_cookie=keep_cookie)

    async def try_login(self, *, name: str | None = None, password: str | None = None,
                        totp: str | None = None) -> Any:
        resp = await self.client.post(LOGIN, json={
            "username": name or self.name, "password": password or self.password,
            "totp": totp or code(self.secret, self.clock())})
        await resp.read()
        self.client.session.cookie_jar.clear()
        return resp


@pytest.fixture
async def admin(make_daemon: MakeDaemon, clock: FakeClock) -> Admin:
    d = await make_daemon(clock=clock)
    root = await d.app[ACCOUNTS].create_user("root", "admin")
    assert root.password and root.totp_uri
    return Admin(d, clock, "root", root.password, secret_of(root.totp_uri), root.api_key)


async def user_names(a: Admin) -> list[str]:
    return [u.name for u in await a.d.app[ACCOUNTS].list_users()]


# --------------------------------------------------------------------------- sessions


async def test_login_session_and_cookie(admin: Admin) -> None:
    c = admin.client
    resp = await c.post(LOGIN, json={"username": "root", "password": admin.password,
                                     "totp": code(admin.secret, admin.clock())})
    body = await ok_json(resp)
    token = body["token"]
    assert token.startswith("dss-") and body["user"] == "root"
    assert body["idle_timeout_s"] == 15 * MINUTE
    cookies = [h for h in resp.headers.getall("Set-Cookie") if h.startswith("deepseekd_admin=")]
    assert len(cookies) == 1
    attrs = [p.strip().lower() for p in cookies[0].split(";")]
    assert attrs[0] == f"deepseekd_admin={token}".lower()
    assert "httponly" in attrs and "samesite=strict" in attrs and "path=/admin" in attrs

    # The cookie alone (the client jar sends it; no Authorization header) opens /admin/.
    listed = await ok_json(await c.get(USERS))
    assert {u["name"] for u in listed["users"]} == {"root", "tester"}
    # ...but not the inference API: the cookie is for the admin pages only.
    await error(await c.get("/v1/models"), 401, "missing_api_key")

    # A state change with the cookie needs the session's CSRF token (from the login body).
    await error(await c.post("/admin/api/logout"), 403, "csrf_failed")
    # Logging out with the cookie ends the session and clears the cookie.
    resp = await c.post("/admin/api/logout", headers={"X-CSRF-Token": csrf_token(token)})
    assert (await ok_json(resp)) == {"logged_out": True}
    await error(await c.get(USERS), 401)
    c.session.cookie_jar.clear()
    await error(await c.get(USERS, headers=bearer(token)), 401, "invalid_api_key")


async def test_admin_api_end_to_end(admin: Admin) -> None:
    c, clock = admin.client, admin.clock
    token = await admin.login()
    auth = bearer(token)

    listed = await ok_json(await c.get(USERS, headers=auth))
    assert [u["name"] for u in listed["users"]] == ["root", "tester"]
    root = listed["users"][0]
    assert root["role"] == "admin" and root["totp_enrolled"] and not root["locked"]

    # A user: a key and a password, no second factor.
    alice = await ok_json(await c.post(USERS, json={"name": "alice", "role": "user"},
                                       headers=auth), 201)
    assert set(alice) == {"name", "role", "api_key", "password"}
    assert alice["api_key"].startswith("dsk-") and len(alice["password"]) >= 12
    # An admin gets a TOTP enrolment too; a metrics identity no password.
    bob = await ok_json(await c.post(USERS, json={"name": "bob", "role": "admin"},
                                     headers=auth), 201)
    assert set(bob) == {"name", "role", "api_key", "password", "totp_uri", "totp_qr_svg"}
    assert bob["totp_qr_svg"].startswith("<svg")
    assert bob["totp_uri"].startswith("otpauth://totp/")
    scraper = await ok_json(await c.post(USERS, json={"name": "scraper", "role": "metrics"},
                                         headers=auth), 201)
    assert set(scraper) == {"name", "role", "api_key"}

    alice_key = bearer(alice["api_key"])
    resp = await c.post(CHAT, json=CHAT_BODY, headers=alice_key)
    await ok_json(resp)
    assert resp.headers["X-RateLimit-Limit"] == "500"

    # Limits.
    patched = await ok_json(await c.patch(f"{USERS}/alice", json={"daily_request_limit": 10},
                                          headers=auth))
    assert patched["daily_request_limit"] == 10 and patched["daily_token_limit"] is None
    resp = await c.post(CHAT, json=CHAT_BODY, headers=alice_key)
    await ok_json(resp)
    assert resp.headers["X-RateLimit-Limit"] == "10"
    assert resp.headers["X-RateLimit-Remaining"] == "8"
    patched = await ok_json(await c.patch(f"{USERS}/alice", json={"daily_request_limit": None},
                                          headers=auth))
    assert patched["daily_request_limit"] is None

    # Keys: a second one works at once; revoked, it fails at once; the first is untouched.
    new = await ok_json(await c.post(f"{USERS}/alice/keys", json={"label": "laptop"},
                                     headers=auth), 201)
    assert isinstance(new["id"], int) and new["api_key"].startswith("dsk-")
    await ok_json(await c.post(CHAT, json=CHAT_BODY, headers=bearer(new["api_key"])))
    keys = (await ok_json(await c.get(f"{USERS}/alice/keys", headers=auth)))["keys"]
    assert [k["label"] for k in keys] == ["initial", "laptop"]
    assert all(k["revoked_at"] is None and k["user"] == "alice" for k in keys)
    assert all(alice["api_key"].startswith(k["prefix"]) or new["api_key"].startswith(k["prefix"])
               for k in keys)
    assert (await ok_json(await c.delete(f"/admin/api/keys/{new['id']}", headers=auth))) == {
        "id": new["id"], "revoked": True}
    await error(await c.post(CHAT, json=CHAT_BODY, headers=bearer(new["api_key"])), 401,
                "invalid_api_key")
    await ok_json(await c.post(CHAT, json=CHAT_BODY, headers=alice_key))
    await error(await c.delete(f"/admin/api/keys/{new['id']}", headers=auth), 404)

    # Disable: the very next request with her key is refused; no new keys for her.
    assert (await ok_json(await c.post(f"{USERS}/alice/disable", headers=auth))) == {
        "name": "alice", "disabled": True}
    await error(await c.post(CHAT, json=CHAT_BODY, headers=alice_key), 401, "invalid_api_key")
    await error(await c.get("/v1/models", headers=alice_key), 401)
    await error(await c.post(f"{USERS}/alice/keys", json={}, headers=auth), 409, param="name")
    listed = await ok_json(await c.get(USERS, headers=auth))
    assert next(u for u in listed["users"] if u["name"] == "alice")["disabled"] is True

    # TOTP reset: a new enrolment, and the admin's open sessions end.
    bob_secret = secret_of(bob["totp_uri"])
    bob_token = await login(c, "bob", bob["password"], bob_secret, clock)
    await ok_json(await c.get(USERS, headers=bearer(bob_token)))
    reset = await ok_json(await c.post(f"{USERS}/bob/totp", headers=auth))
    assert reset["name"] == "bob" and reset["totp_uri"] != bob["totp_uri"]
    new_secret = secret_of(reset["totp_uri"])
    assert new_secret != bob_secret
    await error(await c.get(USERS, headers=bearer(bob_token)), 401, "invalid_api_key")
    clock.advance(30)
    resp = await c.post(LOGIN, json={"username": "bob", "password": bob["password"],
                                     "totp": code(bob_secret, clock())})
    await error(resp, 401, "login_failed")
    c.session.cookie_jar.clear()
    await login(c, "bob", bob["password"], new_secret, clock)
    # Only admins have a second factor to reset.
    await error(await c.post(f"{USERS}/tester/totp", headers=auth), 400, param="name")
    # The reset did not touch root's session.
    await ok_json(await c.get(USERS, headers=auth))

    # Logout ends the session for good.
    await ok_json(await c.post("/admin/api/logout", headers=auth))
    await error(await c.get(USERS, headers=auth), 401, "invalid_api_key")
    await error(await c.post("/admin/api/logout", headers=auth), 401)


async def test_disabling_an_admin_ends_their_sessions(admin: Admin) -> None:
    c = admin.client
    token = await admin.login()
    accounts = admin.d.app[ACCOUNTS]
    bob = await accounts.create_user("bob", "admin")
    assert bob.password and bob.totp_uri
    bob_token = await login(c, "bob", bob.password, secret_of(bob.totp_uri), admin.clock)
    await ok_json(await c.post(f"{USERS}/bob/disable", headers=bearer(token)))
    await error(await c.get(USERS, headers=bearer(bob_token)), 401)
    admin.clock.advance(30)
    resp = await c.post(LOGIN, json={"username": "bob", "password": bob.password,
                                     "totp": code(secret_of(bob.totp_uri), admin.clock())})
    await error(resp, 401, "login_failed")


async def test_logout_ends_the_session_that_authenticated(admin: Admin) -> None:
    c = admin.client
    first = await admin.login(keep_cookie=True)
    admin.clock.advance(30)
    second = await admin.login(keep_cookie=True)  # the jar now holds the second's cookie
    await ok_json(await c.post("/admin/api/logout", headers=bearer(first)))
    c.session.cookie_jar.clear()
    assert (await c.get(USERS, headers=bearer(second))).status == 200
    assert (await c.get(USERS, headers=bearer(first))).status == 401


# --------------------------------------------------------------------------- X-TOTP


async def test_x_totp_on_a_single_call(admin: Admin) -> None:
    c, clock = admin.client, admin.clock
    key = bearer(admin.key)
    await error(await c.get(USERS, headers=key), 401, "totp_required")
    now_code = code(admin.secret, clock())
    listed = await ok_json(await c.get(USERS, headers={**key, "X-TOTP": now_code}))
    assert "root" in [u["name"] for u in listed["users"]]
    # The same code again: a replay, refused, with the same words as a wrong code.
    replay = await error(await c.get(USERS, headers={**key, "X-TOTP": now_code}), 401,
                         "second_factor_failed")
    assert replay["message"] == AuthFailed.PUBLIC_MESSAGE
    wrong = await error(await c.get(USERS, headers={**key, "X-TOTP": wrong_code(
        admin.secret, clock())}), 401, "second_factor_failed")
    assert wrong == replay
    await error(await c.get(USERS, headers={**key, "X-TOTP": "not-a-code"}), 401,
                "second_factor_failed")
    # Writes work the same way; the next step's code is fresh.
    clock.advance(30)
    await ok_json(await c.post(USERS, json={"name": "carol", "role": "auditor"},
                               headers={**key, "X-TOTP": code(admin.secret, clock())}), 201)
    # An X-TOTP call opens no session and sets no cookie.
    assert not c.session.cookie_jar
    # A session's code step is spent too: the code a login used cannot be replayed on a call.
    clock.advance(30)
    await admin.login()
    await error(await c.get(USERS, headers={**key, "X-TOTP": code(admin.secret, clock())}),
                401, "second_factor_failed")


async def test_x_totp_failures_lock_the_key_path(admin: Admin) -> None:
    c, clock = admin.client, admin.clock
    key = bearer(admin.key)
    for _ in range(5):
        await error(await c.get(USERS, headers={**key, "X-TOTP": wrong_code(
            admin.secret, clock())}), 401, "second_factor_failed")
    # Locked on that path from this address: even the right code is refused, and says when.
    err = await error(await c.get(USERS, headers={
        **key, "X-TOTP": code(admin.secret, clock())}), 429, "too_many_attempts")
    assert "try again after" in err["message"]
    # The password path is another path: whoever holds the key is not the password's owner.
    await admin.login()
    clock.advance(15 * MINUTE + 1)
    await ok_json(await c.get(USERS, headers={**key, "X-TOTP": code(admin.secret, clock())}))


# --------------------------------------------------------------------------- lockout


async def test_lockout_after_wrong_passwords(admin: Admin) -> None:
    clock = admin.clock
    accounts = admin.d.app[ACCOUNTS]
    start = clock()
    wrong_pw = await error(await admin.try_login(password="wrong-password-123"), 401,
                           "login_failed")
    for _ in range(4):
        clock.advance(10)
        assert await error(await admin.try_login(password="wrong-password-123"), 401) == wrong_pw
    unknown = await error(await admin.try_login(name="nobody"), 401)
    bad_name = await error(await admin.try_login(name="Not A Name"), 401)
    # Not an admin: the right password of a user opens nothing, and says nothing more.
    tester = await accounts.create_user("plain", "user")
    not_admin = await error(await admin.try_login(name="plain", password=tester.password), 401)
    assert wrong_pw == unknown == bad_name == not_admin
    assert wrong_pw["message"] == AuthFailed.PUBLIC_MESSAGE and wrong_pw["param"] is None
    clock.advance(30)  # a fresh TOTP step: the code is right, the name is locked here
    locked = await error(await admin.try_login(), 429, "too_many_attempts")
    assert locked["message"].startswith("too many attempts; try again after ")
    assert next(u for u in await accounts.list_users() if u.name == "root").locked

    # Still locked one second before the end; open one second after it.
    lock_end = start + 40 + 15 * MINUTE  # the 5th failure was at start + 40 s
    clock.now = lock_end - 1
    await error(await admin.try_login(), 429, "too_many_attempts")
    clock.now = lock_end + 1
    await admin.login()
    assert not next(u for u in await accounts.list_users() if u.name == "root").locked


async def test_lockout_ends_after_15_minutes(admin: Admin) -> None:
    clock = admin.clock
    for _ in range(5):
        await error(await admin.try_login(password="wrong-password-123"), 401, "login_failed")
    clock.advance(30)
    await error(await admin.try_login(), 429, "too_many_attempts")
    clock.advance(15 * MINUTE + 1 - 30)
    await admin.login()


async def test_lockout_counts_totp_failures(admin: Admin) -> None:
    clock = admin.clock
    wrong_pw = await error(await admin.try_login(password="wrong-password-123"), 401)
    for _ in range(4):
        wrong = await error(await admin.try_login(totp=wrong_code(admin.secret, clock())), 401)
        assert wrong == wrong_pw
    clock.advance(30)
    await error(await admin.try_login(), 429, "too_many_attempts")
    clock.advance(15 * MINUTE + 1)
    await admin.login()


async def test_failures_outside_the_window_do_not_lock(admin: Admin) -> None:
    clock = admin.clock
    for _ in range(4):
        await error(await admin.try_login(password="wrong-password-123"), 401)
    clock.advance(15 * MINUTE + 1)
    await error(await admin.try_login(password="wrong-password-123"), 401)
    clock.advance(30)
    await admin.login()


# --------------------------------------------------------------------------- idle sessions


async def test_session_idles_out(admin: Admin) -> None:
    c, clock = admin.client, admin.clock
    token = await admin.login()
    clock.advance(15 * MINUTE + 1)
    await error(await c.get(USERS, headers=bearer(token)), 401, "invalid_api_key")
    # Once ended it stays ended, even if the clock went back.
    clock.advance(-(15 * MINUTE + 1))
    await error(await c.get(USERS, headers=bearer(token)), 401)


async def test_session_expiry_slides(admin: Admin) -> None:
    c, clock = admin.client, admin.clock
    a = await admin.login()
    clock.advance(30)
    b = await admin.login()
    clock.advance(14 * MINUTE)
    await ok_json(await c.get(USERS, headers=bearer(a)))  # a slides; b is not touched
    clock.advance(MINUTE + 1)  # b idle 15 min + 1 s; a idle 61 s
    await error(await c.get(USERS, headers=bearer(b)), 401, "invalid_api_key")
    await ok_json(await c.get(USERS, headers=bearer(a)))
    clock.advance(14 * MINUTE)
    await ok_json(await c.get(USERS, headers=bearer(a)))  # 29 min after login, still open
    clock.advance(15 * MINUTE)  # exactly the idle limit: still open
    await ok_json(await c.get(USERS, headers=bearer(a)))
    clock.advance(15 * MINUTE + 1)
    await error(await c.get(USERS, headers=bearer(a)), 401)


# --------------------------------------------------------------------------- validation


async def test_input_validation(admin: Admin) -> None:
    c = admin.client
    auth = bearer(await admin.login())
    before = await user_names(admin)

    for bad in ("Bad Name", "../x", "a" * 33, "", "x", "1abc", 7, None):
        resp = await c.post(USERS, json={"name": bad, "role": "user"}, headers=auth)
        await error(resp, 400, "invalid_value", "name")
    for bad_role in ("root", "Admin", "", 1):
        await error(await c.post(USERS, json={"name": "dave", "role": bad_role}, headers=auth),
                    400, "invalid_value", "role")
    await error(await c.post(USERS, json={"name": "dave", "role": "user",
                                          "daily_request_limit": -1}, headers=auth),
                400, "invalid_value", "daily_request_limit")
    await error(await c.post(USERS, json={"name": "dave", "role": "user",
                                          "daily_token_limit": -5}, headers=auth),
                400, "invalid_value", "daily_token_limit")
    await error(await c.post(USERS, json={"name": "dave", "role": "user",
                                          "daily_limit": 5}, headers=auth), 400)
    await error(await c.post(USERS, json={"name": "dave"}, headers=auth), 400, param="role")
    await error(await c.post(USERS, data=b"not json", headers={
        **auth, "Content-Type": "application/json"}), 400)
    await error(await c.post(USERS, data=b"name=dave", headers={
        **auth, "Content-Type": "application/x-www-form-urlencoded"}), 415)
    assert await user_names(admin) == before

    # Exactly 2 and 32 characters are fine; a duplicate is a conflict.
    await ok_json(await c.post(USERS, json={"name": "a" * 32, "role": "user"}, headers=auth), 201)
    await ok_json(await c.post(USERS, json={"name": "ab", "role": "user"}, headers=auth), 201)
    await error(await c.post(USERS, json={"name": "ab", "role": "auditor"}, headers=auth),
                409, param="name")
    assert sorted(await user_names(admin)) == sorted(before + ["a" * 32, "ab"])

    # Limits.
    await error(await c.patch(f"{USERS}/ab", json={"daily_request_limit": -1}, headers=auth),
                400, "invalid_value", "daily_request_limit")
    await error(await c.patch(f"{USERS}/ab", json={"daily_request_limit": True}, headers=auth),
                400, param="daily_request_limit")
    await error(await c.patch(f"{USERS}/ab", json={"daily_request_limit": "5"}, headers=auth),
                400, param="daily_request_limit")
    await error(await c.patch(f"{USERS}/ab", json={"daily_limit": 5}, headers=auth), 400)
    await error(await c.patch(f"{USERS}/ab", json={}, headers=auth), 400)
    got = await ok_json(await c.patch(f"{USERS}/ab", json={"daily_token_limit": 0},
                                      headers=auth))
    assert got["daily_token_limit"] == 0 and got["daily_request_limit"] is None

    # Unknown users in the path.
    for method, path, body in (
        ("PATCH", f"{USERS}/ghost", {"daily_request_limit": 1}),
        ("POST", f"{USERS}/ghost/disable", None),
        ("POST", f"{USERS}/ghost/totp", None),
        ("GET", f"{USERS}/ghost/keys", None),
        ("POST", f"{USERS}/ghost/keys", {}),
    ):
        kwargs = {"json": body} if body is not None else {}
        await error(await c.request(method, path, headers=auth, **kwargs), 404, param="name")
    await error(await c.post(f"{USERS}/ab/keys", json={"label": "bad/label"}, headers=auth),
                400, param="label")
    await error(await c.post(f"{USERS}/ab/keys", json={"label": 5}, headers=auth), 400,
                param="label")

    # Key ids.
    for bad_id in ("abc", "-1", "1.5", "9" * 13):
        await error(await c.delete(f"/admin/api/keys/{bad_id}", headers=auth), 400,
                    "invalid_value", "key_id")
    await error(await c.delete("/admin/api/keys/99999", headers=auth), 404)
    # Nothing above disturbed the session.
    await ok_json(await c.get(USERS, headers=auth))


async def test_login_validation(admin: Admin) -> None:
    c = admin.client
    totp = code(admin.secret, admin.clock())
    await error(await c.post(LOGIN, json={}), 400, "invalid_value")
    await error(await c.post(LOGIN, json={"username": "root", "totp": totp}), 400,
                param="password")
    await error(await c.post(LOGIN, json={"username": "root", "password": admin.password,
                                          "api_key": admin.key, "totp": totp}), 400,
                param="password")
    await error(await c.post(LOGIN, json={"username": "root", "password": admin.password,
                                          "totp": totp, "remember": True}), 400)
    # None of that spent the code or counted as a failure: logging in with it works.
    assert not c.session.cookie_jar
    await admin.login()


async def test_login_with_api_key(admin: Admin) -> None:
    c = admin.client
    resp = await c.post(LOGIN, json={"username": "root", "api_key": admin.key,
                                     "totp": code(admin.secret, admin.clock())})
    token = (await ok_json(resp))["token"]
    c.session.cookie_jar.clear()
    await ok_json(await c.get(USERS, headers=bearer(token)))
    admin.clock.advance(30)
    other = await admin.d.app[ACCOUNTS].create_user("other", "admin")
    resp = await c.post(LOGIN, json={"username": "root", "api_key": other.api_key,
                                     "totp": code(admin.secret, admin.clock())})
    await error(resp, 401, "login_failed")
