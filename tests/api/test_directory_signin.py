"""Sign-in with the hospital's directory, end to end: the real daemon (over the fake engine)
against a real OpenLDAP slapd with TLS and the memberOf overlay. Accounts appear at first
sign-in with the role and rights of their groups; losing a group loses its role at the next
sign-in; a user removed from the directory loses their sessions and keys at the recheck; a
directory that is down is a clear 503 while local accounts keep working; names that try to
widen the LDAP filter are refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from deepseekd.http.state import ACCOUNTS, AUDIT, AUTH, METRICS, SERVICES
from deepseekd.services.maintenance import Maintenance
from tests.api.conftest import MODEL, Daemon, MakeDaemon
from tests.api.test_governance import from_address, url
from tests.support.slapd import GROUPS, PEOPLE, SERVICE_DN, SERVICE_PW, Slapd, start_slapd

LEE_PW, KIM_PW, OPS_PW, VOSS_PW = "Lee-pass-2026", "Kim-pass-2026", "Ops-pass-2026", "Voss-2026"


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    with start_slapd(tmp_path_factory.mktemp("slapd")) as d:
        lee = d.add_user("dr.lee", LEE_PW, name="Dr Ana Lee", mail="lee@hospital.test")
        kim = d.add_user("nurse.kim", KIM_PW)
        ops = d.add_user("admin.ops", OPS_PW)
        d.add_user("tester", "Directory-tester-1")  # also a local account's name
        d.add_group("clinicians", [lee, kim])
        d.add_group("radiology", [lee])
        d.add_group("it-admins", [ops])
        yield d


def config(d: Slapd, folder: Path, groups: str = "") -> Path:
    secret = folder / "ldap-password"
    secret.write_text(SERVICE_PW + "\n")
    path = folder / "directory.toml"
    path.write_text(f"""
[auth.ldap]
url = "{d.ldaps_url}"
ca_file = "{d.ca}"
bind_dn = "{SERVICE_DN}"
bind_password_file = "{secret}"
user_base = "{PEOPLE}"
timeout_s = 3

[[auth.group]]
name = "clinicians"
daily_requests = 40

[[auth.group]]
name = "radiology"
daily_requests = 300
daily_tokens = 0

[[auth.group]]
name = "it-admins"
role = "admin"
{groups}
""")
    return path


@pytest.fixture
async def d(make_daemon: MakeDaemon, directory: Slapd, tmp_path: Path) -> Daemon:
    return await make_daemon(env={"DEEPSEEKD_CONFIG": str(config(directory, tmp_path))})


async def web_login(client: TestClient, name: str, password: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/auth/login", json={"username": name, "password": password})
    body = await resp.json()
    return resp.status, body


async def events(d: Daemon, action: str) -> list[dict[str, Any]]:
    await asyncio.sleep(0.05)
    return [e for e in await d.app[AUDIT].query(limit=1000) if e["action"] == action]


async def user_row(d: Daemon, name: str) -> Any:
    return next(u for u in await d.app[ACCOUNTS].list_users() if u.name == name)


async def test_first_sign_in_creates_the_account_with_its_groups_rights(d: Daemon) -> None:
    status, body = await web_login(d.client, "dr.lee", LEE_PW)
    assert status == 200, body
    assert (body["user"], body["role"]) == ("dr.lee", "user")
    session = await (await d.client.get("/auth/session")).json()
    assert session["user"] == "dr.lee"
    # The largest quota of her two groups (radiology 300 > clinicians 40).
    assert session["quota"]["limit"] == 300
    usage = await (await d.client.get("/v1/me/usage")).json()
    assert usage["requests"]["limit"] == 300 and usage["tokens"]["limit"] is None
    listed = await user_row(d, "dr.lee")
    assert (listed.daily_request_limit, listed.group_daily_request_limit) == (None, 300)
    created = await events(d, "user.directory_create")
    assert len(created) == 1 and created[0]["target"] == "user:dr.lee"
    assert "groups=clinicians,radiology" in created[0]["detail"]
    # Second sign-in: the same account, nothing created again.
    d.client.session.cookie_jar.clear()
    assert (await web_login(d.client, "dr.lee", LEE_PW))[0] == 200
    assert len(await events(d, "user.directory_create")) == 1
    # What is held about her includes where the account comes from (GDPR Art. 15).
    exported = (await (await d.client.get("/v1/me/export")).json())["user"]
    assert (exported["source"], exported["groups"]) == ("ldap", ["clinicians", "radiology"])
    assert exported["external_id"] == f"uid=dr.lee,{PEOPLE}"
    kim_status, kim = await web_login(d.client, "nurse.kim", KIM_PW)
    assert kim_status == 200 and kim["role"] == "user"
    assert (await (await d.client.get("/auth/session")).json())["quota"]["limit"] == 40


async def test_wrong_password_and_unknown_names_are_refused_alike(d: Daemon) -> None:
    for name, password in [("dr.lee", "wrong"), ("dr.lee", LEE_PW.lower()), ("nobody", LEE_PW),
                           ("dr.lee", "")]:
        status, body = await web_login(d.client, name, password)
        assert status in (400, 401), (name, body)
    denied = [e for e in await events(d, "web.login") if e["outcome"] == "denied"]
    assert len(denied) >= 3
    assert all(LEE_PW not in str(e) for e in denied)  # never the password
    users = {u.name for u in await d.app[ACCOUNTS].list_users()}
    assert "nobody" not in users and "dr.lee" not in users  # nothing created on a refusal


@pytest.mark.parametrize("name", ["*", "dr.lee)(uid=*", "*)(|(uid=*", "dr.lee*", "admin.ops\x00",
                                  "(uid=dr.lee)"])
async def test_ldap_injection_in_the_name_is_refused(d: Daemon, name: str) -> None:
    status, _ = await web_login(d.client, name, LEE_PW)
    assert status in (400, 401)
    assert all(u.name in ("tester",) for u in await d.app[ACCOUNTS].list_users())


async def test_admin_group_gives_admin_and_losing_it_loses_it_at_next_sign_in(
    d: Daemon, directory: Slapd
) -> None:
    group = f"cn=it-admins,{GROUPS}"
    status, body = await web_login(d.client, "admin.ops", OPS_PW)
    assert (status, body["role"]) == (200, "admin")
    # A directory admin still needs this daemon's second factor for the console.
    resp = await d.client.post("/admin/api/login",
                               json={"username": "admin.ops", "password": OPS_PW, "totp": "000000"})
    assert resp.status == 401
    directory.set_members(group, [f"uid=dr.lee,{PEOPLE}"])
    try:
        d.client.session.cookie_jar.clear()
        status, body = await web_login(d.client, "admin.ops", OPS_PW)
        assert (status, body["role"]) == (200, "user")
        changed = await events(d, "user.directory_change")
        assert changed and "role admin -> user" in changed[-1]["detail"]
        assert "it-admins" in changed[-1]["detail"]
    finally:
        directory.set_members(group, [f"uid=admin.ops,{PEOPLE}"])


async def test_a_user_removed_from_the_directory_loses_sessions_and_keys(
    d: Daemon, directory: Slapd
) -> None:
    dn = directory.add_user("dr.voss", VOSS_PW)
    try:
        voss = d.client
        assert (await web_login(voss, "dr.voss", VOSS_PW))[0] == 200
        _, key = await d.app[ACCOUNTS].create_key("dr.voss", "scripts")
        keyed = {"Authorization": f"Bearer {key}"}
        assert (await voss.get("/v1/models", headers=keyed)).status == 200
        # The recheck finds the others still there: nothing changes for them.
        await Maintenance(d.app[SERVICES]).tick(now=1e9)
        assert (await voss.get("/auth/session")).status == 200
        directory.delete(dn)
        assert await d.app[AUTH].directory.recheck() == 1
        assert (await voss.get("/auth/session")).status == 401
        assert (await voss.get("/v1/models", headers=keyed)).status == 401
        assert (await user_row(d, "dr.voss")).disabled
        removed = await events(d, "user.directory_remove")
        assert removed[-1]["target"] == "user:dr.voss" and "1 sessions ended" in removed[-1]["detail"]
        assert (await web_login(voss, "dr.voss", VOSS_PW))[0] == 401
        # Back in the directory: signing in again enables the account (and its key).
        directory.add_user("dr.voss", VOSS_PW)
        assert (await web_login(voss, "dr.voss", VOSS_PW))[0] == 200
        assert (await voss.get("/v1/models", headers=keyed)).status == 200
    finally:
        directory.delete(f"uid=dr.voss,{PEOPLE}")


async def test_an_admin_disable_is_not_lifted_by_the_directory(d: Daemon) -> None:
    assert (await web_login(d.client, "nurse.kim", KIM_PW))[0] == 200
    await d.app[ACCOUNTS].disable_user("nurse.kim")
    d.client.session.cookie_jar.clear()
    assert (await web_login(d.client, "nurse.kim", KIM_PW))[0] == 401
    assert await d.app[AUTH].directory.recheck() == 0
    assert (await user_row(d, "nurse.kim")).disabled


async def test_directory_down_is_a_503_and_local_accounts_still_sign_in(
    d: Daemon, directory: Slapd
) -> None:
    local = await d.app[ACCOUNTS].create_user("breakglass", "user")
    assert local.password
    assert (await web_login(d.client, "dr.lee", LEE_PW))[0] == 200  # an account to recheck
    d.client.session.cookie_jar.clear()
    directory.stop()
    try:
        status, body = await web_login(d.client, "dr.lee", LEE_PW)
        assert status == 503, body
        assert body["error"]["code"] == "directory_unavailable"
        assert "local accounts" in body["error"]["message"]
        status, body = await web_login(d.client, "breakglass", local.password)
        assert (status, body["user"]) == (200, "breakglass")
        # The recheck cannot tell: it changes nothing rather than disable everyone.
        assert await d.app[AUTH].directory.recheck() == 0
        assert not (await user_row(d, "dr.lee")).disabled
        # Counted for the IdentitySourceUnavailable alert: the sign-in and the recheck.
        errors = d.app[METRICS].registry.get_sample_value(
            "deepseekd_identity_source_errors_total", {"source": "ldap"})
        assert errors == 2
    finally:
        directory.start()
    d.client.session.cookie_jar.clear()
    assert (await web_login(d.client, "dr.lee", LEE_PW))[0] == 200


async def test_a_local_accounts_name_never_signs_in_with_the_directory(d: Daemon) -> None:
    # "tester" is a local account (created by the fixture) and a directory user.
    status, _ = await web_login(d.client, "tester", "Directory-tester-1")
    assert status == 401
    assert (await user_row(d, "tester")).source == "local"


async def test_directory_users_change_their_password_in_the_directory(d: Daemon) -> None:
    status, body = await web_login(d.client, "dr.lee", LEE_PW)
    with pytest.raises(Exception, match="reset the password there"):
        await d.app[ACCOUNTS].reset_password("dr.lee")  # an admin's reset: the same
    resp = await d.client.post("/auth/password",
                               json={"current_password": LEE_PW, "new_password": "x" * 16},
                               headers={"X-CSRF-Token": body["csrf_token"]})
    err = (await resp.json())["error"]
    assert resp.status == 400 and err["param"] == "current_password"
    assert "directory" in err["message"]


async def test_models_reserved_to_a_group(make_daemon: MakeDaemon, directory: Slapd,
                                          tmp_path: Path) -> None:
    reserve = f'\n[[auth.group]]\nname = "oncology"\nmodels = ["{MODEL}"]\n'
    d = await make_daemon(env={"DEEPSEEKD_CONFIG": str(config(directory, tmp_path, reserve))})
    onc = directory.add_group("oncology", [f"uid=nurse.kim,{PEOPLE}"])
    try:
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        for name, password, allowed in [("dr.lee", LEE_PW, False), ("nurse.kim", KIM_PW, True)]:
            d.client.session.cookie_jar.clear()
            status, body = await web_login(d.client, name, password)
            assert status == 200
            csrf = {"X-CSRF-Token": body["csrf_token"]}
            models = await (await d.client.get("/v1/models")).json()
            assert [m["id"] for m in models["data"]] == ([MODEL] if allowed else [])
            resp = await d.client.post("/v1/chat/completions", json=chat, headers=csrf)
            if allowed:
                assert resp.status == 200, await resp.text()
            else:
                err = (await resp.json())["error"]
                assert (resp.status, err["param"], err["code"]) == (
                    403, "model", "model_not_permitted")
        # A local account (in no group) may not use it either; nothing was counted for it.
        resp = await d.post("/v1/chat/completions", chat)
        assert resp.status == 403
        assert (await (await d.client.get("/v1/me/usage", headers=d.auth)).json()
                )["requests"]["used"] == 0
    finally:
        directory.delete(onc)


async def test_an_erased_directory_user_is_not_brought_back_by_the_directory(
    d: Daemon, directory: Slapd
) -> None:
    """Erasure (GDPR Art. 17) against the directory: the person is still in the directory,
    but signing in neither re-enables the erased account nor creates a fresh one."""
    assert (await web_login(d.client, "nurse.kim", KIM_PW))[0] == 200
    d.client.session.cookie_jar.clear()
    await d.app[SERVICES].erasure.erase("nurse.kim")
    status, _ = await web_login(d.client, "nurse.kim", KIM_PW)
    assert status == 401
    assert await d.app[AUTH].directory.recheck() == 0
    kim = [u for u in await d.app[ACCOUNTS].list_users() if u.name == "nurse.kim"]
    assert len(kim) == 1 and kim[0].disabled
    assert len(await events(d, "user.directory_create")) == 1


async def test_a_strangers_wrong_passwords_do_not_lock_out_the_directory_admin(
    make_daemon: MakeDaemon, directory: Slapd, tmp_path: Path
) -> None:
    """One feature against another: the lock counts per name *and* address."""
    env = {"DEEPSEEKD_CONFIG": str(config(directory, tmp_path)),
           "DEEPSEEKD_AUTH__LOCKOUT_THRESHOLD": "3"}
    d = await make_daemon(env=env)
    async with from_address(d, "127.0.0.2") as stranger:
        for _ in range(5):
            resp = await stranger.post(url(d, "/auth/login"),
                                       json={"username": "admin.ops", "password": "guess"})
            assert resp.status in (401, 429)
        resp = await stranger.post(url(d, "/auth/login"),
                                   json={"username": "admin.ops", "password": OPS_PW})
        assert resp.status == 429  # locked from there, even with the right password
    locks = await events(d, "account.lockout")
    assert locks, "the stranger's address got locked"
    status, body = await web_login(d.client, "admin.ops", OPS_PW)
    assert (status, body.get("role")) == (200, "admin")
