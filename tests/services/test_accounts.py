"""Accounts against SQLite and PostgreSQL: users, keys, sessions, TOTP and lockout."""

from __future__ import annotations

import urllib.parse

import pytest
from sqlalchemy import text

from deepseekd.config import AuthSettings
from deepseekd.security.apikeys import hash_api_key
from deepseekd.security.totp import code_at
from deepseekd.domain.errors import AuthFailed, DomainError
from deepseekd.http.errors import from_domain
from deepseekd.services.accounts import MAX_LIMIT, NewUser
from tests.db_fixtures import FakeClock
from tests.support.services import Accounts, make_accounts

MINUTE = 60.0


def totp_secret(uri: str) -> str:
    query = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)
    return query["secret"][0]


async def make_admin(accounts: Accounts, name: str = "root") -> tuple[NewUser, str]:
    new = await accounts.create_user(name, "admin")
    assert new.totp_uri is not None
    return new, totp_secret(new.totp_uri)


# --------------------------------------------------------------------------- users


@pytest.mark.parametrize("role", ["admin", "user", "auditor", "metrics"])
async def test_create_user_returns_credentials_once(accounts: Accounts, role: str) -> None:
    new = await accounts.create_user("alice", role)
    assert (new.name, new.role) == ("alice", role)
    assert new.api_key.startswith("dsk-") and len(new.api_key) > 30
    if role == "metrics":
        assert new.password is None
    else:
        assert isinstance(new.password, str) and len(new.password) >= 12
    if role == "admin":
        assert new.totp_uri is not None and new.totp_uri.startswith("otpauth://totp/")
        assert "alice" in new.totp_uri and totp_secret(new.totp_uri)
    else:
        assert new.totp_uri is None
    shown = new.as_json()
    assert shown["api_key"] == new.api_key
    assert ("password" in shown) == (role != "metrics")
    assert ("totp_uri" in shown) == (role == "admin")

    who = await accounts.authenticate_key(new.api_key)
    assert who is not None
    assert (who.name, who.role, who.via) == ("alice", role, "api_key")
    assert who.key_id is not None
    assert await accounts.authenticate_key(new.api_key + "x") is None
    assert await accounts.authenticate_key("dsk-nonsense") is None

    [info] = await accounts.list_users()
    assert (info.name, info.role, info.disabled, info.active_keys) == ("alice", role, False, 1)
    assert info.totp_enrolled is (role == "admin")
    assert await accounts.has_users()


async def test_duplicate_name_is_a_conflict(accounts: Accounts) -> None:
    await accounts.create_user("alice", "user")
    with pytest.raises(DomainError) as err:
        await accounts.create_user("alice", "admin")
    assert from_domain(err.value).status == 409
    assert err.value.field == "name"
    [info] = await accounts.list_users()
    assert info.role == "user"


@pytest.mark.parametrize(
    "name",
    ["", "A", "x", "has space", "../etc", "a;drop", "a" * 33, "jörg", "ålice", "Alice",
     "1abc", "-abc", "abc\n", None, 42],
)
async def test_invalid_names_create_nothing(accounts: Accounts, name: object) -> None:
    await accounts.create_user("keeper", "user")
    before = await accounts.list_users()
    with pytest.raises(DomainError) as err:
        await accounts.create_user(name, "user")
    assert err.value.field == "name"
    assert from_domain(err.value).status == 400
    assert await accounts.list_users() == before


async def test_name_length_bounds(accounts: Accounts) -> None:
    await accounts.create_user("ab", "user")
    await accounts.create_user("a" * 32, "user")
    assert {u.name for u in await accounts.list_users()} == {"ab", "a" * 32}


@pytest.mark.parametrize("role", ["root", "", "Admin", None, "admin "])
async def test_invalid_role(accounts: Accounts, role: object) -> None:
    with pytest.raises(DomainError) as err:
        await accounts.create_user("alice", role)
    assert err.value.field == "role"
    assert await accounts.list_users() == []


@pytest.mark.parametrize("field", ["daily_request_limit", "daily_token_limit"])
@pytest.mark.parametrize("value", [-1, True, False, MAX_LIMIT + 1, 2**63, 1.5, "10"])
async def test_invalid_limits_name_the_field(accounts: Accounts, field: str,
                                             value: object) -> None:
    with pytest.raises(DomainError) as err:
        await accounts.create_user("alice", "user", **{field: value})
    assert err.value.field == field
    assert from_domain(err.value).status == 400
    assert await accounts.list_users() == []


async def test_valid_limits_are_stored(accounts: Accounts) -> None:
    await accounts.create_user("alice", "user", daily_request_limit=0,
                               daily_token_limit=MAX_LIMIT)
    new = await accounts.create_user("bob", "user", daily_request_limit=7)
    [alice, bob] = await accounts.list_users()
    assert (alice.daily_request_limit, alice.daily_token_limit) == (0, MAX_LIMIT)
    assert (bob.daily_request_limit, bob.daily_token_limit) == (7, None)
    who = await accounts.authenticate_key(new.api_key)
    assert who is not None and who.daily_request_limit == 7 and who.daily_token_limit is None


# --------------------------------------------------------------------------- keys


async def test_several_keys_and_revocation(accounts: Accounts) -> None:
    new = await accounts.create_user("alice", "user")
    k2_id, k2 = await accounts.create_key("alice", "laptop")
    k3_id, k3 = await accounts.create_key("alice")
    assert len({new.api_key, k2, k3}) == 3 and k2.startswith("dsk-")
    for key in (new.api_key, k2, k3):
        who = await accounts.authenticate_key(key)
        assert who is not None and who.name == "alice"
    assert (await accounts.authenticate_key(k2)).key_id == k2_id  # type: ignore[union-attr]

    await accounts.revoke_key(k2_id)
    assert await accounts.authenticate_key(k2) is None  # at once
    assert await accounts.authenticate_key(k3) is not None
    assert await accounts.authenticate_key(new.api_key) is not None

    keys = {k.id: k for k in await accounts.list_keys("alice")}
    assert keys[k2_id].revoked_at is not None and keys[k2_id].label == "laptop"
    assert keys[k3_id].revoked_at is None
    assert all(k.prefix.startswith("dsk-") and k.user == "alice" for k in keys.values())
    assert (await accounts.list_users())[0].active_keys == 2

    with pytest.raises(DomainError) as err:
        await accounts.revoke_key(k2_id)  # already revoked
    assert from_domain(err.value).status == 404
    with pytest.raises(DomainError) as err:
        await accounts.revoke_key(999_999)
    assert from_domain(err.value).status == 404 and err.value.field is not None


async def test_create_key_for_unknown_user(accounts: Accounts) -> None:
    with pytest.raises(DomainError) as err:
        await accounts.create_key("ghost")
    assert from_domain(err.value).status == 404 and err.value.field == "name"


async def test_disable_user_ends_keys_and_sessions(accounts: Accounts,
                                                   clock: FakeClock) -> None:
    admin, secret = await make_admin(accounts)
    _, k2 = await accounts.create_key("root", "second")
    token, _ = await accounts.login("root", password=admin.password,
                                    code=code_at(secret, clock()))
    assert await accounts.authenticate_session(token) is not None
    other = await accounts.create_user("bob", "user")

    await accounts.disable_user("root")
    assert await accounts.authenticate_key(admin.api_key) is None
    assert await accounts.authenticate_key(k2) is None
    assert await accounts.authenticate_session(token) is None
    assert await accounts.authenticate_key(other.api_key) is not None  # others unaffected
    clock.advance(30)
    with pytest.raises(AuthFailed):
        await accounts.login("root", password=admin.password, code=code_at(secret, clock()))
    with pytest.raises(DomainError) as err:
        await accounts.create_key("root")
    assert from_domain(err.value).status == 409
    [info] = [u for u in await accounts.list_users() if u.name == "root"]
    assert info.disabled
    with pytest.raises(DomainError) as err:
        await accounts.disable_user("ghost")
    assert from_domain(err.value).status == 404


async def test_database_stores_no_secret(accounts: Accounts, db, clock: FakeClock) -> None:
    admin, secret = await make_admin(accounts)
    user = await accounts.create_user("bob", "user")
    _, extra = await accounts.create_key("bob", "extra")
    token, _ = await accounts.login("root", password=admin.password,
                                    code=code_at(secret, clock()))
    users, keys, sessions = await db.read("test", lambda s: [
        [dict(r) for r in s.execute(text(f"SELECT * FROM {table}")).mappings().all()]
        for table in ("users", "api_keys", "admin_sessions")])
    dump = repr([*users, *keys, *sessions])
    for secret_value in (admin.api_key, admin.password, user.api_key, user.password, extra,
                         token):
        assert secret_value is not None
        assert secret_value not in dump
    for row in users:
        assert row["password_hash"].startswith("$argon2id$")
    assert {r["key_hash"] for r in keys} == {hash_api_key(k)
                                             for k in (admin.api_key, user.api_key, extra)}
    assert [r["token_hash"] for r in sessions] == [hash_api_key(token)]


# --------------------------------------------------------------------------- login, sessions


async def test_login_with_password_and_totp(accounts: Accounts, clock: FakeClock) -> None:
    admin, secret = await make_admin(accounts)
    token, who = await accounts.login("root", password=admin.password,
                                      code=code_at(secret, clock()))
    assert token.startswith("dss-") and len(token) > 30
    assert (who.name, who.role, who.via) == ("root", "admin", "session")
    again = await accounts.authenticate_session(token)
    assert again is not None and (again.name, again.role, again.via) == ("root", "admin",
                                                                           "session")
    assert await accounts.authenticate_session("dss-unknown") is None
    assert await accounts.authenticate_session(admin.api_key) is None


async def test_session_slides_then_idles_out(accounts: Accounts, clock: FakeClock) -> None:
    admin, secret = await make_admin(accounts)
    idle = AuthSettings().session_idle_minutes * MINUTE
    token, _ = await accounts.login("root", password=admin.password,
                                    code=code_at(secret, clock()))
    for _ in range(3):  # each use extends it: 3 x (idle - 1 min) > idle since login
        clock.advance(idle - MINUTE)
        assert await accounts.authenticate_session(token) is not None
    clock.advance(idle + 1)
    assert await accounts.authenticate_session(token) is None
    clock.advance(-idle)  # even back within the window: an ended session stays ended
    assert await accounts.authenticate_session(token) is None


async def test_logout_ends_the_session(accounts: Accounts, clock: FakeClock) -> None:
    admin, secret = await make_admin(accounts)
    token, _ = await accounts.login("root", password=admin.password,
                                    code=code_at(secret, clock()))
    clock.advance(30)
    token2, _ = await accounts.login("root", password=admin.password,
                                     code=code_at(secret, clock()))
    await accounts.logout(token)
    assert await accounts.authenticate_session(token) is None
    assert await accounts.authenticate_session(token2) is not None  # only that one
    await accounts.logout("dss-unknown")  # harmless


async def test_login_with_api_key_instead_of_password(accounts: Accounts,
                                                      clock: FakeClock) -> None:
    admin, secret = await make_admin(accounts)
    token, who = await accounts.login("root", api_key=admin.api_key,
                                      code=code_at(secret, clock()))
    assert who.name == "root" and await accounts.authenticate_session(token) is not None
    # Another user's key does not open root's account; a revoked key opens nothing.
    other = await accounts.create_user("bob", "user")
    clock.advance(30)
    with pytest.raises(AuthFailed):
        await accounts.login("root", api_key=other.api_key, code=code_at(secret, clock()))
    key_id, key = await accounts.create_key("root")
    await accounts.revoke_key(key_id)
    clock.advance(30)
    with pytest.raises(AuthFailed):
        await accounts.login("root", api_key=key, code=code_at(secret, clock()))


@pytest.mark.parametrize("role", ["user", "auditor", "metrics"])
async def test_non_admin_login_refused(accounts: Accounts, role: str) -> None:
    new = await accounts.create_user("bob", role)
    with pytest.raises(AuthFailed):
        if new.password is not None:
            await accounts.login("bob", password=new.password, code="123456")
        else:
            await accounts.login("bob", api_key=new.api_key, code="123456")


async def test_login_needs_the_second_factor(accounts: Accounts, clock: FakeClock) -> None:
    admin, secret = await make_admin(accounts)
    for code in (None, "", "12345", "abcdef", 123456):
        with pytest.raises(AuthFailed):
            await accounts.login("root", password=admin.password, code=code)
    good = code_at(secret, clock())
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    with pytest.raises(AuthFailed):
        await accounts.login("root", password=admin.password, code=wrong)


async def test_unknown_user_and_wrong_password_look_the_same(accounts: Accounts,
                                                             clock: FakeClock) -> None:
    admin, secret = await make_admin(accounts)
    code = code_at(secret, clock())
    for kwargs in (
        {"username": "ghost", "password": admin.password, "code": code},
        {"username": "root", "password": "wrong-password-123", "code": code},
        {"username": "root", "password": "", "code": code},
        {"username": "Root", "password": admin.password, "code": code},
        {"username": None, "password": admin.password, "code": code},
        {"username": "root", "code": code},
    ):
        with pytest.raises(AuthFailed):
            await accounts.login(**kwargs)
    # What callers show names no reason and no user.
    msg = AuthFailed.PUBLIC_MESSAGE
    assert isinstance(msg, str) and msg.startswith("authentication failed")
    assert "root" not in msg and "ghost" not in msg
    # None of those consumed the code: it still opens a session.
    token, _ = await accounts.login("root", password=admin.password, code=code)
    assert token.startswith("dss-")


# --------------------------------------------------------------------------- TOTP replay


async def test_totp_code_is_accepted_once_per_step(accounts: Accounts,
                                                   clock: FakeClock) -> None:
    admin, secret = await make_admin(accounts)
    code = code_at(secret, clock())
    _, who = await accounts.login("root", password=admin.password, code=code)
    with pytest.raises(AuthFailed):
        await accounts.login("root", password=admin.password, code=code)
    with pytest.raises(AuthFailed):
        await accounts.verify_second_factor(who, code)
    clock.advance(30)
    nxt = code_at(secret, clock())
    await accounts.verify_second_factor(who, nxt)
    with pytest.raises(AuthFailed):
        await accounts.verify_second_factor(who, nxt)
    with pytest.raises(AuthFailed):
        await accounts.login("root", password=admin.password, code=nxt)
    clock.advance(30)
    token, _ = await accounts.login("root", password=admin.password,
                                    code=code_at(secret, clock()))
    assert token.startswith("dss-")


async def test_verify_second_factor_first_then_login_replay(accounts: Accounts,
                                                            clock: FakeClock) -> None:
    admin, secret = await make_admin(accounts)
    who = await accounts.authenticate_key(admin.api_key)
    assert who is not None
    code = code_at(secret, clock())
    await accounts.verify_second_factor(who, code)
    with pytest.raises(AuthFailed):
        await accounts.login("root", password=admin.password, code=code)
    with pytest.raises(AuthFailed):
        await accounts.verify_second_factor(who, "000000" if code != "000000" else "111111")


async def test_older_step_after_newer_is_refused(accounts: Accounts,
                                                 clock: FakeClock) -> None:
    """Codes of the previous step are accepted (clock drift) unless a newer one was used."""
    admin, secret = await make_admin(accounts)
    who = await accounts.authenticate_key(admin.api_key)
    assert who is not None
    old = code_at(secret, clock())
    clock.advance(30)
    await accounts.verify_second_factor(who, code_at(secret, clock()))
    if old != code_at(secret, clock()):
        with pytest.raises(AuthFailed):
            await accounts.verify_second_factor(who, old)


# --------------------------------------------------------------------------- lockout


STRANGER, DESK = "203.0.113.9", "10.0.0.5"


@pytest.mark.parametrize("kinds", ["ppppp", "ccccc", "pcpcp"])
async def test_five_failures_lock_the_name_from_that_address(accounts: Accounts,
                                                             clock: FakeClock,
                                                             kinds: str) -> None:
    admin, secret = await make_admin(accounts)
    for kind in kinds:
        clock.advance(40)  # a fresh step each time, so a right code would be fresh too
        good = code_at(secret, clock())
        with pytest.raises(AuthFailed):
            if kind == "p":
                await accounts.login("root", password="not-the-password", code=good,
                                     source=DESK)
            else:
                bad = f"{(int(good) + 500_000) % 1_000_000:06d}"
                await accounts.login("root", password=admin.password, code=bad, source=DESK)
    assert [u.locked for u in await accounts.list_users()] == [True]
    clock.advance(30)
    with pytest.raises(AuthFailed) as err:  # right password, right code: still refused here
        await accounts.login("root", password=admin.password, code=code_at(secret, clock()),
                             source=DESK)
    assert err.value.locked_until == pytest.approx(clock() - 30 + 15 * MINUTE)
    assert err.value.message.startswith("too many attempts; try again after ")
    assert err.value.message.endswith("(UTC) or ask IT to unlock the account")
    # The API key and its second factor are another path: not locked.
    who = await accounts.authenticate_key(admin.api_key)
    assert who is not None
    clock.advance(30)
    await accounts.verify_second_factor(who, code_at(secret, clock()), DESK)

    clock.advance(15 * MINUTE - 60)  # 15 minutes after the fifth failure
    assert [u.locked for u in await accounts.list_users()] == [False]
    token, _ = await accounts.login("root", password=admin.password,
                                    code=code_at(secret, clock()), source=DESK)
    assert await accounts.authenticate_session(token) is not None


async def test_a_strangers_wrong_passwords_lock_out_no_one_else(accounts: Accounts,
                                                               clock: FakeClock) -> None:
    """The denial of service the review found: five wrong passwords on the open chat login
    locked the admin out of every path. Now they lock the stranger's address only."""
    admin, secret = await make_admin(accounts)
    for _ in range(10):
        clock.advance(1)
        with pytest.raises(AuthFailed):
            await accounts.web_login("root", "guess-guess-guess", source=STRANGER)
    clock.advance(30)
    token, _ = await accounts.login("root", password=admin.password,
                                    code=code_at(secret, clock()), source=DESK)
    assert token.startswith("dss-")
    clock.advance(30)
    token, _ = await accounts.login("root", api_key=admin.api_key,
                                    code=code_at(secret, clock()), source=STRANGER)
    assert token.startswith("dss-")  # the key path is not the password path
    web, _ = await accounts.web_login("root", admin.password, source=DESK)
    assert web.startswith("dss-")
    with pytest.raises(AuthFailed) as err:
        await accounts.web_login("root", admin.password, source=STRANGER)
    assert err.value.locked_until is not None


async def test_names_that_do_not_exist_lock_alike(accounts: Accounts, clock: FakeClock) -> None:
    """A locked name says the same whether it exists or not: nothing is revealed."""
    await make_admin(accounts)
    messages = {}
    for name in ("root", "ghost"):
        for _ in range(5):
            with pytest.raises(AuthFailed) as err:
                await accounts.web_login(name, "wrong-wrong-wrong", source=STRANGER)
            assert err.value.locked_until is None  # plain refusals until the lock
        with pytest.raises(AuthFailed) as err:
            await accounts.web_login(name, "wrong-wrong-wrong", source=STRANGER)
        messages[name] = (err.value.message, err.value.locked_until)
    assert messages["root"] == messages["ghost"]


async def test_one_address_is_throttled_before_any_password_is_checked(
        accounts: Accounts, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepseekd.domain.errors import RateLimited
    from deepseekd.security import passwords

    await make_admin(accounts)
    checked = []
    real = passwords.verify_password
    monkeypatch.setattr(passwords, "verify_password",
                        lambda h, p: checked.append(p) or real(h, p))
    for i in range(30):  # auth.login_attempts_per_minute
        with pytest.raises(AuthFailed):
            await accounts.web_login(f"flood{i}", "x" * 12, source=STRANGER)
    with pytest.raises(RateLimited) as err:
        await accounts.web_login("flood-x", "x" * 12, source=STRANGER)
    assert err.value.code == "too_many_attempts" and 1 <= (err.value.retry_after or 0) <= 61
    assert len(checked) == 30  # the 31st never reached Argon2
    with pytest.raises(AuthFailed):  # another address is not affected
        await accounts.web_login("flood-x", "x" * 12, source=DESK)


async def test_api_key_sign_in_costs_the_same_for_any_name(
        accounts: Accounts, clock: FakeClock, db, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin API-key sign-in took 6 ms for a known name and 28 ms for an unknown one
    (Argon2 ran only for the unknown). Now both do the same work: no Argon2, the same
    transactions."""
    from deepseekd.security import passwords

    admin, secret = await make_admin(accounts)
    hashed: list[str] = []
    monkeypatch.setattr(passwords, "verify_password", lambda h, p: hashed.append(p) or False)
    runs: dict[str, list[str]] = {}
    for name in ("root", "ghost"):
        seen: list[str] = []
        monkeypatch.setattr(db, "observe", lambda tx, _s, seen=seen: seen.append(tx))
        with pytest.raises(AuthFailed):
            await accounts.login(name, api_key="dsk-wrong", code="000000", source=DESK)
        runs[name] = seen
    assert runs["root"] == runs["ghost"] and hashed == []


async def test_unlock_lifts_every_lock_on_the_name(accounts: Accounts, clock: FakeClock) -> None:
    admin, secret = await make_admin(accounts)
    for source in (STRANGER, DESK):
        for _ in range(5):
            with pytest.raises(AuthFailed):
                await accounts.web_login("root", "wrong-wrong-wrong", source=source)
    assert [u.locked for u in await accounts.list_users()] == [True]
    assert await accounts.unlock("root") == 2
    assert [u.locked for u in await accounts.list_users()] == [False]
    token, _ = await accounts.web_login("root", admin.password, source=STRANGER)
    assert token.startswith("dss-")
    with pytest.raises(DomainError) as err:
        await accounts.unlock("nobody")
    assert from_domain(err.value).status == 404


async def test_password_reset_is_one_time_and_must_be_changed(accounts: Accounts,
                                                              clock: FakeClock) -> None:
    from deepseekd.domain.errors import Forbidden, Invalid

    admin, secret = await make_admin(accounts)
    user = await accounts.create_user("nurse", "user")
    old_session, _ = await accounts.web_login("nurse", user.password, source=DESK)
    one_time = await accounts.reset_password("nurse")
    assert one_time != user.password
    assert await accounts.authenticate_session(old_session, "web") is None  # sessions end
    with pytest.raises(AuthFailed):
        await accounts.web_login("nurse", user.password, source=DESK)
    token, who = await accounts.web_login("nurse", one_time, source=DESK)
    assert who.password_change_required
    session = await accounts.authenticate_session(token, "web")
    assert session is not None and session.password_change_required
    with pytest.raises(Invalid):
        await accounts.change_password(session, one_time, "short", token)
    with pytest.raises(AuthFailed):
        await accounts.change_password(session, "not-the-one-time", "a-new-password-1", token)
    await accounts.change_password(session, one_time, "a-new-password-1", token)
    after = await accounts.authenticate_session(token, "web")
    assert after is not None and not after.password_change_required  # this session stays
    with pytest.raises(AuthFailed):
        await accounts.web_login("nurse", one_time, source=DESK)
    _, again = await accounts.web_login("nurse", "a-new-password-1", source=DESK)
    assert not again.password_change_required
    # An admin whose password was reset must change it before the console opens.
    admin_once = await accounts.reset_password("root")
    with pytest.raises(Forbidden):
        await accounts.login("root", password=admin_once, code=code_at(secret, clock()),
                             source=DESK)


async def test_enable_again_but_not_after_erasure(accounts: Accounts) -> None:
    user = await accounts.create_user("leaver", "user")
    await accounts.disable_user("leaver")
    assert await accounts.authenticate_key(user.api_key) is None
    await accounts.enable_user("leaver")
    assert await accounts.authenticate_key(user.api_key) is not None


async def test_sessions_end_after_the_absolute_lifetime(accounts: Accounts,
                                                        clock: FakeClock) -> None:
    user = await accounts.create_user("busy", "user")
    token, _ = await accounts.web_login("busy", user.password, source=DESK)
    for _ in range(int(12 * 60 / 10) - 1):  # used every 10 minutes for (almost) 12 hours
        clock.advance(10 * MINUTE)
        assert await accounts.authenticate_session(token, "web") is not None
    clock.advance(11 * MINUTE)
    assert await accounts.authenticate_session(token, "web") is None


async def test_revoking_the_key_ends_the_session_it_opened(accounts: Accounts,
                                                          clock: FakeClock) -> None:
    admin, secret = await make_admin(accounts)
    key_id, key = await accounts.create_key("root", "console")
    by_key, _ = await accounts.login("root", api_key=key, code=code_at(secret, clock()),
                                     source=DESK)
    clock.advance(30)
    by_password, _ = await accounts.login("root", password=admin.password,
                                          code=code_at(secret, clock()), source=DESK)
    await accounts.revoke_key(key_id)
    assert await accounts.authenticate_session(by_key) is None
    assert await accounts.authenticate_session(by_password) is not None


async def test_failures_outside_the_window_do_not_lock(accounts: Accounts,
                                                       clock: FakeClock) -> None:
    admin, secret = await make_admin(accounts)
    for _ in range(4):
        clock.advance(1)
        with pytest.raises(AuthFailed):
            await accounts.login("root", password="not-the-password", code="000000")
    clock.advance(16 * MINUTE)
    with pytest.raises(AuthFailed):
        await accounts.login("root", password="not-the-password", code="000000")
    assert [u.locked for u in await accounts.list_users()] == [False]
    token, _ = await accounts.login("root", password=admin.password,
                                    code=code_at(secret, clock()))
    assert token.startswith("dss-")


async def test_four_failures_do_not_lock(accounts: Accounts, clock: FakeClock) -> None:
    admin, secret = await make_admin(accounts)
    for _ in range(4):
        with pytest.raises(AuthFailed):
            await accounts.login("root", password="not-the-password", code="000000")
    token, _ = await accounts.login("root", password=admin.password,
                                    code=code_at(secret, clock()))
    assert token.startswith("dss-")


async def test_wrong_second_factor_on_api_key_calls_counts(accounts: Accounts,
                                                           clock: FakeClock) -> None:
    """Wrong X-TOTP codes with a valid key lock the key path from that address; the
    password path stays open (whoever holds the key is not the password's owner)."""
    admin, secret = await make_admin(accounts)
    who = await accounts.authenticate_key(admin.api_key)
    assert who is not None
    for _ in range(5):
        clock.advance(1)
        with pytest.raises(AuthFailed):
            await accounts.verify_second_factor(who, "abcdef", STRANGER)
    clock.advance(30)
    with pytest.raises(AuthFailed) as err:
        await accounts.verify_second_factor(who, code_at(secret, clock()), STRANGER)
    assert err.value.locked_until is not None
    token, _ = await accounts.login("root", password=admin.password,
                                    code=code_at(secret, clock()), source=STRANGER)
    assert token.startswith("dss-")
