"""OpenID Connect sign-in against a real OpenID provider (Authlib's provider side, over TLS
with a test CA), driven without a browser: begin(), the provider's login form posted with
httpx, the redirect's code, finish(). Success with groups, amr and email; claims only in
userinfo; every way the ID token can be wrong (audience, expiry, iat, nonce, algorithm,
signature, unknown key), key rotation, a replayed code, the discovery naming another issuer,
a provider that is down or not trusted, the second factor, and RP-initiated logout."""

from __future__ import annotations

import dataclasses
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx
import pytest

from deepseekd.config import OidcSettings
from deepseekd.directory.oidc import (
    JWKS_REFETCH_S,
    PENDING_TTL_S,
    DirectoryError,
    DirectoryRefused,
    DirectoryUnavailable,
    OidcClient,
    OidcUser,
    PendingLogin,
)
from tests.support.oidc_provider import Provider, start_provider
from tests.support.slapd import _free_port, _pki

CLIENT_ID = "deepseekd"
SECRET = "client-secret-for-tests"
REDIRECT = "https://deepseekd.test/auth/oidc/callback"
AFTER_LOGOUT = "https://deepseekd.test/"


class Clock:
    """Real time, plus what a test moves it on by (the JWKS refetch limit)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    with start_provider(tmp_path_factory.mktemp("oidc")) as op:
        op.register_client(CLIENT_ID, SECRET, REDIRECT, [AFTER_LOGOUT])
        op.add_user(
            "dr.lee",
            "Lee-pass-2026",
            groups=["clinicians", "radiology"],
            amr=["pwd"],
            email="lee@hospital.test",
            name="Dr Ana Lee",
        )
        op.add_user("admin.ops", "Ops-pass-2026", groups=["it-admins"], amr=["pwd", "otp"])
        op.add_user("nurse.kim", "Kim-pass-2026")  # no groups claim at all
        yield op


@pytest.fixture
def op(provider: Provider) -> Iterator[Provider]:
    yield provider
    provider.reset()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    f = tmp_path / "oidc-secret"
    f.write_text(SECRET + "\n")
    f.chmod(0o600)
    return f


def settings(op: Provider, secret: Path, **kw: object) -> OidcSettings:
    base = OidcSettings(
        issuer=op.issuer,
        client_id=CLIENT_ID,
        client_secret_file=str(secret),
        redirect_url=REDIRECT,
        ca_file=str(op.ca),
        timeout_s=3,
    )
    return dataclasses.replace(base, **kw)


async def sign_in(op: Provider, url: str, username: str, password: str) -> dict[str, str]:
    """What a browser would do at the provider: the form, the password, the redirect back
    (not followed: its query is what deepseekd's callback would get)."""
    tls = ssl.create_default_context(cafile=str(op.ca))
    async with httpx.AsyncClient(verify=tls, timeout=5) as http:
        page = await http.get(url)
        assert page.status_code == 200, page.text
        assert "Sign in" in page.text and 'name="password"' in page.text
        answer = await http.post(url, data={"username": username, "password": password})
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return dict(parse_qsl(urlsplit(location).query))


async def login(
    client: OidcClient, op: Provider, username: str = "dr.lee", password: str = "Lee-pass-2026"
) -> OidcUser:
    url, pending = await client.begin()
    params = await sign_in(op, url, username, password)
    return await client.finish(pending, client.code_from_callback(pending, params))


async def refused(client: OidcClient, op: Provider, reason: str) -> DirectoryError:
    with pytest.raises(DirectoryRefused) as caught:
        await login(client, op)
    assert caught.value.reason == reason, caught.value
    return caught.value


# -- the flow that works ----------------------------------------------------------------------


async def test_sign_in_gives_the_user_with_groups_amr_and_email(
    op: Provider, secret_file: Path
) -> None:
    user = await login(OidcClient(settings(op, secret_file)), op)
    assert user.username == "dr.lee"
    assert user.subject == op.users["dr.lee"].sub
    assert user.issuer == op.issuer
    assert user.display_name == "Dr Ana Lee"
    assert user.email == "lee@hospital.test"
    assert user.groups == ("clinicians", "radiology")
    assert user.amr == ("pwd",)
    assert user.acr is None
    assert user.id_token.count(".") == 2


async def test_app_roles_are_matched_like_groups(op: Provider, secret_file: Path) -> None:
    """Entra ID's app roles (the roles claim), when roles_claim names it."""
    op.tamper_next(roles=["deepseekd.admin", "radiology"])
    user = await login(OidcClient(settings(op, secret_file, roles_claim="roles")), op)
    assert user.groups == ("clinicians", "radiology", "deepseekd.admin")
    op.tamper_next(roles=["deepseekd.admin"])
    user = await login(OidcClient(settings(op, secret_file)), op)  # not configured: ignored
    assert user.groups == ("clinicians", "radiology")


async def test_authorization_url_asks_for_code_with_pkce_s256_and_nonce(
    op: Provider, secret_file: Path
) -> None:
    url, pending = await OidcClient(settings(op, secret_file)).begin()
    assert url.startswith(f"{op.issuer}/authorize?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == REDIRECT
    assert query["scope"] == "openid profile email"
    assert query["state"] == pending.state and query["nonce"] == pending.nonce
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] != pending.code_verifier
    assert "code_verifier" not in query


async def test_wrong_password_stays_on_the_provider_form(op: Provider, secret_file: Path) -> None:
    url, _ = await OidcClient(settings(op, secret_file)).begin()
    tls = ssl.create_default_context(cafile=str(op.ca))
    async with httpx.AsyncClient(verify=tls) as http:
        page = await http.post(url, data={"username": "dr.lee", "password": "nope"})
    assert page.status_code == 200
    assert "wrong password" in page.text


async def test_missing_groups_claim_means_no_groups(op: Provider, secret_file: Path) -> None:
    user = await login(OidcClient(settings(op, secret_file)), op, "nurse.kim", "Kim-pass-2026")
    assert user.username == "nurse.kim"
    assert user.groups == ()
    assert user.email is None


async def test_claims_missing_from_the_id_token_come_from_userinfo(
    op: Provider, secret_file: Path
) -> None:
    op.id_token_omits.update({"preferred_username", "groups"})
    user = await login(OidcClient(settings(op, secret_file)), op)
    assert user.username == "dr.lee"
    assert user.groups == ("clinicians", "radiology")


async def test_userinfo_for_another_subject_is_refused(op: Provider, secret_file: Path) -> None:
    op.id_token_omits.add("groups")
    op.userinfo_overrides["sub"] = "someone-else"
    await refused(OidcClient(settings(op, secret_file)), op, "userinfo_mismatch")


async def test_no_username_claim_is_refused_not_replaced_by_sub(
    op: Provider, secret_file: Path
) -> None:
    client = OidcClient(settings(op, secret_file, username_claim="upn"))
    err = await refused(client, op, "no_username")
    assert "upn" in str(err)


async def test_username_from_another_claim(op: Provider, secret_file: Path) -> None:
    user = await login(OidcClient(settings(op, secret_file, username_claim="email")), op)
    assert user.username == "lee@hospital.test"


# -- refusals -----------------------------------------------------------------------------------


async def test_replayed_code_is_refused(op: Provider, secret_file: Path) -> None:
    client = OidcClient(settings(op, secret_file))
    url, pending = await client.begin()
    code = client.code_from_callback(pending, await sign_in(op, url, "dr.lee", "Lee-pass-2026"))
    assert (await client.finish(pending, code)).username == "dr.lee"
    with pytest.raises(DirectoryRefused) as caught:
        await client.finish(pending, code)
    assert caught.value.reason == "code_refused"
    assert code not in str(caught.value)


async def test_code_with_another_pkce_verifier_is_refused(op: Provider, secret_file: Path) -> None:
    client = OidcClient(settings(op, secret_file))
    url, pending = await client.begin()
    code = client.code_from_callback(pending, await sign_in(op, url, "dr.lee", "Lee-pass-2026"))
    other = dataclasses.replace(pending, code_verifier="x" * 64)
    with pytest.raises(DirectoryRefused) as caught:
        await client.finish(other, code)
    assert caught.value.reason == "code_refused"


async def test_callback_with_another_state_or_an_error_is_refused(
    op: Provider, secret_file: Path
) -> None:
    client = OidcClient(settings(op, secret_file))
    _, pending = await client.begin()
    with pytest.raises(DirectoryRefused) as caught:
        client.code_from_callback(pending, {"code": "abc", "state": "forged"})
    assert caught.value.reason == "state_mismatch"
    with pytest.raises(DirectoryRefused) as caught:
        client.code_from_callback(pending, {"error": "access_denied", "state": pending.state})
    assert caught.value.reason == "provider_refused"
    assert "access_denied" in str(caught.value)


async def test_sign_in_begun_too_long_ago_is_refused(op: Provider, secret_file: Path) -> None:
    clock = Clock()
    client = OidcClient(settings(op, secret_file), clock=clock)
    url, pending = await client.begin()
    code = client.code_from_callback(pending, await sign_in(op, url, "dr.lee", "Lee-pass-2026"))
    clock.offset = PENDING_TTL_S + 1
    with pytest.raises(DirectoryRefused) as caught:
        await client.finish(pending, code)
    assert caught.value.reason == "login_expired"


async def test_token_for_another_audience_is_refused(op: Provider, secret_file: Path) -> None:
    op.tamper_next(aud="someone-else")
    await refused(OidcClient(settings(op, secret_file)), op, "wrong_audience")


async def test_several_audiences_need_azp_naming_this_client(
    op: Provider, secret_file: Path
) -> None:
    client = OidcClient(settings(op, secret_file))
    op.tamper_next(aud=[CLIENT_ID, "other-app"])
    await refused(client, op, "wrong_audience")
    op.tamper_next(aud=[CLIENT_ID, "other-app"], azp="other-app")
    await refused(client, op, "wrong_audience")
    op.tamper_next(aud=[CLIENT_ID, "other-app"], azp=CLIENT_ID)
    assert (await login(client, op)).username == "dr.lee"


async def test_token_from_another_issuer_is_refused(op: Provider, secret_file: Path) -> None:
    op.tamper_next(iss="https://evil.test")
    await refused(OidcClient(settings(op, secret_file)), op, "wrong_issuer")


async def test_expired_token_is_refused(op: Provider, secret_file: Path) -> None:
    op.tamper_next(exp_offset=-3600 - 120)
    await refused(OidcClient(settings(op, secret_file)), op, "expired")


async def test_token_expired_within_the_clock_skew_passes(op: Provider, secret_file: Path) -> None:
    op.tamper_next(exp_offset=-3600 - 5)
    user = await login(OidcClient(settings(op, secret_file, clock_skew_s=60)), op)
    assert user.username == "dr.lee"


async def test_token_issued_in_the_future_is_refused(op: Provider, secret_file: Path) -> None:
    op.tamper_next(iat_offset=3600)
    await refused(OidcClient(settings(op, secret_file)), op, "issued_in_future")


async def test_nonce_mismatch_is_refused(op: Provider, secret_file: Path) -> None:
    op.tamper_next(nonce="wrong")
    await refused(OidcClient(settings(op, secret_file)), op, "nonce_mismatch")
    op.tamper_next(drop=("nonce",))
    await refused(OidcClient(settings(op, secret_file)), op, "nonce_mismatch")


async def test_broken_signature_is_refused(op: Provider, secret_file: Path) -> None:
    op.tamper_next(bad_signature=True)
    await refused(OidcClient(settings(op, secret_file)), op, "bad_signature")


async def test_none_and_hmac_algorithms_are_refused_even_when_advertised(
    op: Provider, secret_file: Path
) -> None:
    op.metadata_overrides["id_token_signing_alg_values_supported"] = ["RS256", "HS256", "none"]
    client = OidcClient(settings(op, secret_file))
    op.tamper_next(alg="none")
    await refused(client, op, "bad_algorithm")
    op.tamper_next(alg="HS256")
    await refused(client, op, "bad_algorithm")


async def test_algorithm_the_provider_does_not_advertise_is_refused(
    op: Provider, secret_file: Path
) -> None:
    op.metadata_overrides["id_token_signing_alg_values_supported"] = ["ES256"]
    await refused(OidcClient(settings(op, secret_file)), op, "bad_algorithm")


async def test_missing_sub_is_refused(op: Provider, secret_file: Path) -> None:
    op.tamper_next(drop=("sub",))
    await refused(OidcClient(settings(op, secret_file)), op, "bad_token")


# -- keys ---------------------------------------------------------------------------------------


async def test_key_rotation_refetches_the_jwks(op: Provider, secret_file: Path) -> None:
    clock = Clock()
    client = OidcClient(settings(op, secret_file), clock=clock)
    assert (await login(client, op)).username == "dr.lee"
    fetched = op.jwks_requests
    op.rotate_key()
    clock.offset = JWKS_REFETCH_S + 1
    assert (await login(client, op)).username == "dr.lee"
    assert op.jwks_requests == fetched + 1
    assert (await login(client, op)).username == "dr.lee"  # the new key is cached now
    assert op.jwks_requests == fetched + 1


async def test_unknown_key_is_refused_after_one_refetch(op: Provider, secret_file: Path) -> None:
    clock = Clock()
    client = OidcClient(settings(op, secret_file), clock=clock)
    await login(client, op)
    fetched = op.jwks_requests
    op.rotate_key(publish=False)
    clock.offset = JWKS_REFETCH_S + 1
    await refused(client, op, "unknown_key")
    assert op.jwks_requests == fetched + 1
    await refused(client, op, "unknown_key")  # within 30 s of that refetch: no other
    assert op.jwks_requests == fetched + 1


# -- the provider itself ------------------------------------------------------------------------


async def test_discovery_naming_another_issuer_is_refused(op: Provider, secret_file: Path) -> None:
    # The same provider reached as 127.0.0.1: its document names https://localhost:PORT.
    other = op.issuer.replace("localhost", "127.0.0.1")
    client = OidcClient(settings(op, secret_file, issuer=other))
    with pytest.raises(DirectoryUnavailable) as caught:
        await client.discover()
    assert caught.value.reason == "issuer_mismatch"
    with pytest.raises(DirectoryUnavailable) as caught:
        await client.begin()
    assert caught.value.reason == "issuer_mismatch"


async def test_discovery_without_a_usable_algorithm_is_refused(
    op: Provider, secret_file: Path
) -> None:
    op.metadata_overrides["id_token_signing_alg_values_supported"] = ["HS256", "none"]
    with pytest.raises(DirectoryUnavailable) as caught:
        await OidcClient(settings(op, secret_file)).discover()
    assert caught.value.reason == "bad_discovery"


async def test_provider_on_a_dead_port_is_unavailable(op: Provider, secret_file: Path) -> None:
    client = OidcClient(settings(op, secret_file, issuer=f"https://localhost:{_free_port()}"))
    with pytest.raises(DirectoryUnavailable) as caught:
        await client.begin()
    assert caught.value.reason == "unavailable"


async def test_provider_stopping_mid_sign_in_is_unavailable(
    tmp_path: Path, secret_file: Path
) -> None:
    with start_provider(tmp_path / "op") as down:
        down.register_client(CLIENT_ID, SECRET, REDIRECT)
        down.add_user("dr.lee", "Lee-pass-2026")
        client = OidcClient(settings(down, secret_file))
        url, pending = await client.begin()
        params = await sign_in(down, url, "dr.lee", "Lee-pass-2026")
    with pytest.raises(DirectoryUnavailable) as caught:
        await client.finish(pending, client.code_from_callback(pending, params))
    assert caught.value.reason == "unavailable"


async def test_provider_with_an_untrusted_certificate_is_unavailable(
    op: Provider, secret_file: Path, tmp_path: Path
) -> None:
    other_ca, _, _ = _pki(tmp_path)
    client = OidcClient(settings(op, secret_file, ca_file=str(other_ca)))
    with pytest.raises(DirectoryUnavailable) as caught:
        await client.discover()
    assert caught.value.reason == "unavailable"


async def test_wrong_client_secret_is_the_configurations_fault(
    op: Provider, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-secret\n")
    with pytest.raises(DirectoryUnavailable) as caught:
        await login(OidcClient(settings(op, wrong)), op)
    assert caught.value.reason == "client_rejected"
    assert "not-the-secret" not in str(caught.value)


def test_settings_errors_name_the_key(op: Provider, secret_file: Path) -> None:
    with pytest.raises(ValueError, match=r"auth\.oidc\.issuer"):
        OidcClient(settings(op, secret_file, issuer="http://localhost"))
    with pytest.raises(ValueError, match=r"auth\.oidc\.scopes"):
        OidcClient(settings(op, secret_file, scopes=("profile",)))


# -- second factor and logout -------------------------------------------------------------------


async def test_proves_mfa_from_amr(op: Provider, secret_file: Path) -> None:
    client = OidcClient(settings(op, secret_file))
    admin = await login(client, op, "admin.ops", "Ops-pass-2026")
    assert admin.amr == ("pwd", "otp")
    assert client.proves_mfa(admin)
    assert not client.proves_mfa(await login(client, op))


def test_proves_mfa_from_acr(op: Provider, secret_file: Path) -> None:
    client = OidcClient(settings(op, secret_file, mfa_acr=("gold",)))
    user = OidcUser("s", op.issuer, "u", None, None, (), ("pwd",), "gold", "t")
    assert client.proves_mfa(user)
    assert not client.proves_mfa(dataclasses.replace(user, acr="bronze"))


async def test_logout_url_ends_the_provider_session(op: Provider, secret_file: Path) -> None:
    client = OidcClient(settings(op, secret_file))
    user = await login(client, op)
    url = await client.logout_url(user.id_token, AFTER_LOGOUT)
    assert url is not None and url.startswith(f"{op.issuer}/logout?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query == {
        "id_token_hint": user.id_token,
        "client_id": CLIENT_ID,
        "post_logout_redirect_uri": AFTER_LOGOUT,
    }
    tls = ssl.create_default_context(cafile=str(op.ca))
    async with httpx.AsyncClient(verify=tls) as http:
        answer = await http.get(url)
    assert answer.status_code == 302
    assert answer.headers["location"] == AFTER_LOGOUT
    assert "Signed out" in answer.text
    assert op.signed_out[-1] == user.subject


async def test_logout_url_is_none_without_end_session_endpoint(
    op: Provider, secret_file: Path
) -> None:
    op.metadata_overrides["end_session_endpoint"] = None
    assert await OidcClient(settings(op, secret_file)).logout_url("t", AFTER_LOGOUT) is None


def test_pending_login_is_plain_data() -> None:
    pending = PendingLogin("s", "n", "v", 1.0)
    assert dataclasses.asdict(pending) == {
        "state": "s",
        "nonce": "n",
        "code_verifier": "v",
        "created_at": 1.0,
    }
