"""Single sign-on through the daemon's routes against a real OpenID provider (Authlib's
provider side, TLS with a test CA, signing-key rotation): the browser's steps are done
with plain HTTP here (the Playwright journey is in tests/e2e/test_web_sso.py). Tampered
state, a replayed code, a wrong audience, an expired token, an unknown key after rotation
and a nonce mismatch are each refused with a page that says so and an audit event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from deepseekd.http.state import ACCOUNTS, AUDIT, METRICS
from deepseekd.security import totp
from tests.api.conftest import Daemon, MakeDaemon
from tests.api.helpers import secret_of
from tests.services.test_oidc_client import sign_in
from tests.support.oidc_provider import Provider, start_provider

CLIENT_ID, SECRET = "deepseekd-test", "oidc-client-secret-for-tests"
REDIRECT = "https://deepseekd.test/auth/oidc/callback"
LEE_PW, OPS_PW = "Lee-pass-2026", "Ops-pass-2026"


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    with start_provider(tmp_path_factory.mktemp("oidc")) as op:
        op.register_client(CLIENT_ID, SECRET, REDIRECT, ["https://deepseekd.test/"])
        op.add_user("dr.lee", LEE_PW, groups=["clinicians", "radiology"], email="lee@h.test")
        op.add_user("admin.ops", OPS_PW, groups=["it-admins"], amr=["pwd"])
        op.add_user("admin.mfa", OPS_PW, groups=["it-admins"], amr=["pwd", "otp"])
        op.add_user("dpo.kim", OPS_PW, groups=["dpo"])
        yield op


@pytest.fixture
def op(provider: Provider) -> Iterator[Provider]:
    yield provider
    provider.reset()


def config(op: Provider, folder: Path, admin_mfa: str = "totp") -> dict[str, str]:
    secret = folder / "oidc-secret"
    secret.write_text(SECRET + "\n")
    path = folder / "sso.toml"
    path.write_text(f"""
[auth]
admin_mfa = "{admin_mfa}"

[auth.oidc]
issuer = "{op.issuer}"
client_id = "{CLIENT_ID}"
client_secret_file = "{secret}"
redirect_url = "{REDIRECT}"
ca_file = "{op.ca}"
button_label = "Sign in with Hospital ID"

[[auth.group]]
name = "radiology"
daily_requests = 300

[[auth.group]]
name = "it-admins"
role = "admin"

[[auth.group]]
name = "dpo"
role = "auditor"
""")
    return {"DEEPSEEKD_CONFIG": str(path)}


@pytest.fixture
async def d(make_daemon: MakeDaemon, op: Provider, tmp_path: Path) -> Daemon:
    return await make_daemon(env=config(op, tmp_path))


async def start(d: Daemon, to: str = "chat") -> str:
    resp = await d.client.get(f"/auth/oidc/login?to={to}", allow_redirects=False)
    assert resp.status == 302, await resp.text()
    assert "deepseekd_sso" in resp.cookies  # binds the sign-in to this browser
    return resp.headers["Location"]


async def callback(d: Daemon, params: dict[str, str]) -> Any:
    return await d.client.get("/auth/oidc/callback", params=params, allow_redirects=False)


async def round_trip(d: Daemon, op: Provider, user: str = "dr.lee", password: str = LEE_PW,
                     to: str = "chat") -> Any:
    params = await sign_in(op, await start(d, to), user, password)
    return await callback(d, params)


async def denied(d: Daemon, action: str = "oidc.login") -> list[str]:
    await asyncio.sleep(0.05)
    return [e["detail"] for e in await d.app[AUDIT].query(limit=1000)
            if e["action"] == action and e["outcome"] == "denied"]


async def test_button_config_is_public(d: Daemon) -> None:
    body = await (await d.client.get("/auth/oidc")).json()
    assert body == {"enabled": True, "label": "Sign in with Hospital ID"}


async def test_not_configured_is_a_clear_404(daemon: Daemon) -> None:
    assert (await (await daemon.client.get("/auth/oidc")).json())["enabled"] is False
    resp = await daemon.client.get("/auth/oidc/login", allow_redirects=False)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "sso_not_configured"


async def test_sign_in_opens_a_chat_session_for_a_new_account(d: Daemon, op: Provider) -> None:
    resp = await round_trip(d, op)
    assert resp.status == 302 and resp.headers["Location"] == "/"
    session = await (await d.client.get("/auth/session")).json()
    assert (session["user"], session["role"], session["quota"]["limit"]) == ("dr.lee", "user", 300)
    users = {u.name: u for u in await d.app[ACCOUNTS].list_users()}
    assert users["dr.lee"].source == "oidc"
    assert sorted(users["dr.lee"].groups) == ["clinicians", "radiology"]
    events = [e for e in await d.app[AUDIT].query(limit=1000)
              if e["action"] in ("user.directory_create", "web.login")]
    assert [(e["action"], e["outcome"]) for e in events] == [
        ("user.directory_create", "ok"), ("web.login", "ok")]
    assert events[1]["detail"] == "via oidc"
    # Logging out sends the browser on to the provider's end-session page.
    csrf = session["csrf_token"]
    out = await (await d.client.post("/auth/logout", headers={"X-CSRF-Token": csrf})).json()
    url = out["end_session_url"]
    assert url.startswith(f"{op.issuer}/") and "id_token_hint=" in url
    assert "post_logout_redirect_uri=https%3A%2F%2Fdeepseekd.test%2F" in url
    assert (await d.client.get("/auth/session")).status == 401


async def test_tampered_state_is_refused_with_a_page_and_an_event(d: Daemon, op: Provider) -> None:
    params = await sign_in(op, await start(d), "dr.lee", LEE_PW)
    resp = await callback(d, {**params, "state": params["state"][:-2] + "xx"})
    assert resp.status == 401 and "text/html" in resp.headers["Content-Type"]
    assert "not started in this browser" in await resp.text()
    assert (await d.client.get("/auth/session")).status == 401
    assert await denied(d) == ["state_mismatch"]


async def test_a_callback_from_another_browser_is_refused(d: Daemon, op: Provider) -> None:
    params = await sign_in(op, await start(d), "dr.lee", LEE_PW)
    d.client.session.cookie_jar.clear()  # the link opened elsewhere: no binding cookie
    resp = await callback(d, params)
    assert resp.status == 401
    assert await denied(d) == ["state_mismatch"]


async def test_a_replayed_code_is_refused(d: Daemon, op: Provider) -> None:
    params = await sign_in(op, await start(d), "dr.lee", LEE_PW)
    assert (await callback(d, params)).status == 302
    # The same callback again: its sign-in is over.
    assert (await callback(d, params)).status == 401
    # The old code under a fresh sign-in's state: the provider refuses to redeem it twice.
    fresh = urlsplit(await start(d))
    state = parse_qs(fresh.query)["state"][0]
    resp = await callback(d, {"code": params["code"], "state": state})
    assert resp.status == 401 and "may have been used already" in await resp.text()
    assert await denied(d) == ["state_mismatch", "code_refused"]


@pytest.mark.parametrize(("tamper", "reason", "words"), [
    ({"aud": "someone-else"}, "wrong_audience", "could not be verified"),
    ({"exp_offset": -3600 - 120}, "expired", "could not be verified"),
    ({"nonce": "wrong"}, "nonce_mismatch", "could not be verified"),
    ({"iat_offset": 3600}, "issued_in_future", "could not be verified"),
])
async def test_bad_id_tokens_are_refused(d: Daemon, op: Provider, tamper: dict[str, Any],
                                         reason: str, words: str) -> None:
    op.tamper_next(**tamper)
    resp = await round_trip(d, op)
    assert resp.status == 401 and words in await resp.text()
    assert await denied(d) == [reason]
    assert (await d.client.get("/auth/session")).status == 401
    assert all(u.name != "dr.lee" for u in await d.app[ACCOUNTS].list_users())


async def test_key_rotation_works_and_an_unknown_key_is_refused(
    make_daemon: MakeDaemon, op: Provider, tmp_path: Path, clock: Any
) -> None:
    d = await make_daemon(env=config(op, tmp_path), clock=clock)
    assert (await round_trip(d, op)).status == 302
    op.rotate_key()  # published: the daemon refetches the key set once
    clock.advance(31)  # JWKS refetches are at most one per 30 s
    d.client.session.cookie_jar.clear()
    assert (await round_trip(d, op)).status == 302
    op.rotate_key(publish=False)
    clock.advance(31)
    d.client.session.cookie_jar.clear()
    resp = await round_trip(d, op)
    assert resp.status == 401
    assert await denied(d) == ["unknown_key"]


async def test_admin_with_totp_gets_a_ticket_then_the_console(d: Daemon, op: Provider) -> None:
    resp = await round_trip(d, op, "admin.ops", OPS_PW, to="admin")
    assert resp.status == 401  # an admin without a second factor enrolled here yet
    assert "another admin enrols one" in await resp.text()
    uri = await d.app[ACCOUNTS].reset_totp("admin.ops")
    resp = await round_trip(d, op, "admin.ops", OPS_PW, to="admin")
    assert resp.status == 302
    location = resp.headers["Location"]
    assert location.startswith("/admin#sso-ticket=")
    ticket = location.partition("=")[2]
    wrong = await d.client.post("/admin/api/login/sso", json={"ticket": ticket, "totp": "000000"})
    assert wrong.status == 401
    code = totp.code_at(secret_of(uri), time.time())
    ok = await d.client.post("/admin/api/login/sso", json={"ticket": ticket, "totp": code})
    assert ok.status == 200, await ok.text()
    token = (await ok.json())["token"]
    status = await d.client.get("/admin/api/status", headers={"Authorization": f"Bearer {token}"})
    assert status.status == 200
    # A ticket opens one session only.
    again = await d.client.post("/admin/api/login/sso", json={"ticket": ticket, "totp": code})
    assert again.status == 401


async def test_a_user_cannot_open_the_console_through_the_provider(d: Daemon,
                                                                   op: Provider) -> None:
    resp = await round_trip(d, op, "dr.lee", LEE_PW, to="admin")
    assert resp.status == 401 and "may not sign in" in await resp.text()
    assert "not an active admin" in (await denied(d, "admin.login"))[-1]


async def test_an_auditor_gets_the_consoles_auditor_view(d: Daemon, op: Provider) -> None:
    resp = await round_trip(d, op, "dpo.kim", OPS_PW, to="admin")
    assert resp.status == 302 and resp.headers["Location"] == "/admin"
    session = await (await d.client.get("/auth/session")).json()
    assert (session["user"], session["role"]) == ("dpo.kim", "auditor")
    assert (await d.client.get("/audit/api/events")).status == 200
    assert (await d.client.get("/admin/api/session")).status == 401  # never the admin API


async def test_idp_mfa_opens_the_console_only_with_proof(make_daemon: MakeDaemon, op: Provider,
                                                         tmp_path: Path) -> None:
    d = await make_daemon(env=config(op, tmp_path, admin_mfa="idp"))
    resp = await round_trip(d, op, "admin.ops", OPS_PW, to="admin")
    assert resp.status == 401  # amr ["pwd"]: no second factor proven
    assert "no second factor proven" in (await denied(d, "admin.login"))[-1]
    resp = await round_trip(d, op, "admin.mfa", OPS_PW, to="admin")
    assert resp.status == 302 and resp.headers["Location"] == "/admin"
    assert "deepseekd_admin" in resp.cookies
    session = await d.client.get("/admin/api/session")
    assert session.status == 200 and (await session.json())["user"] == "admin.mfa"


async def test_provider_down_is_a_clear_503(make_daemon: MakeDaemon, tmp_path: Path,
                                            op: Provider) -> None:
    env = config(op, tmp_path)
    path = Path(env["DEEPSEEKD_CONFIG"])
    path.write_text(path.read_text().replace(op.issuer, "https://localhost:1"))
    d = await make_daemon(env=env)
    resp = await d.client.get("/auth/oidc/login", allow_redirects=False)
    assert resp.status == 503 and "cannot be reached" in await resp.text()
    assert d.app[METRICS].registry.get_sample_value(
        "deepseekd_identity_source_errors_total", {"source": "oidc"}) == 1


async def test_a_provider_name_never_takes_over_another_account(d: Daemon,
                                                                op: Provider) -> None:
    """The provider asserts names; accounts are matched by issuer and subject, and a name
    that belongs to a local account is not the provider's to sign in as."""
    await d.app[ACCOUNTS].create_user("dr.lee", "admin")
    resp = await round_trip(d, op)
    assert resp.status == 401 and "may not sign in" in await resp.text()
    assert "name taken by another account" in (await denied(d, "web.login"))[-1]
    assert (await d.client.get("/auth/session")).status == 401
