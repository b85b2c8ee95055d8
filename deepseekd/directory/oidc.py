"""Sign-in with an OpenID provider (Keycloak, Entra ID, ADFS, Okta...) as a relying party.

The authorization code flow with PKCE (S256), a confidential client (``client_secret_basic``,
the secret read from ``client_secret_file``). The provider is found by discovery and must
name exactly the configured issuer. The ID token is checked with joserfc, never by hand:
the signature against the provider's JWKS (refetched once when a token names a key not in
it, at most once per ``JWKS_REFETCH_S``), only the asymmetric algorithms the provider
advertises (never ``none``, never HMAC), then ``iss``, ``aud``/``azp``, ``exp``, ``iat``
(within ``clock_skew_s``), ``nonce`` and ``at_hash`` with Authlib's ``CodeIDToken``. The user
name and groups come from the configured claims, or from the userinfo endpoint when the ID
token lacks them. Everything goes over TLS, checked against ``ca_file`` or the system CAs.

Tokens, codes and the client secret never appear in a message or a log line: each refusal
is a ``DirectoryError`` whose ``reason`` is safe for audit events.
"""

from __future__ import annotations

import hmac
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from authlib.common.security import generate_token
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    InvalidKeyIdError,
    JoseError,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from deepseekd.config import OidcSettings
from deepseekd.directory.ldap import (
    USERNAME,
    DirectoryError,
    DirectoryRefused,
    DirectoryUnavailable,
)

JWKS_REFETCH_S = 30.0
"""Least time between two fetches of the provider's keys (an unknown ``kid`` asks for one)."""
PENDING_TTL_S = 600.0
"""How long a sign-in begun with ``begin()`` may take at the provider."""
REQUIRED_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri")
OPTIONAL_ENDPOINTS = ("userinfo_endpoint", "end_session_endpoint")
ERROR_CODE = re.compile(r"[a-z_]{1,64}")
"""An OAuth error code as it may be repeated in a message (the rest is the provider's text)."""


class BadDiscovery(DirectoryUnavailable):
    """The discovery document or the key set cannot be used (missing endpoints, no keys)."""

    reason = "bad_discovery"


class IssuerMismatch(DirectoryUnavailable):
    """The discovery document names another issuer than ``auth.oidc.issuer``."""

    reason = "issuer_mismatch"


class ClientRejected(DirectoryUnavailable):
    """The token endpoint refused this daemon's client ID or secret: a configuration error."""

    reason = "client_rejected"


class ProviderRefused(DirectoryRefused):
    """The provider sent the browser back with an error (``access_denied``, ...)."""

    reason = "provider_refused"


class StateMismatch(DirectoryRefused):
    """The callback's ``state`` is not the one this sign-in sent (CSRF, or a stale tab)."""

    reason = "state_mismatch"


class LoginExpired(DirectoryRefused):
    """The sign-in began more than ``PENDING_TTL_S`` ago."""

    reason = "login_expired"


class CodeRefused(DirectoryRefused):
    """The token endpoint refused the code (already used, expired, wrong PKCE verifier)."""

    reason = "code_refused"


class BadToken(DirectoryRefused):
    """The ID token is malformed or a claim has the wrong shape."""

    reason = "bad_token"


class BadSignature(BadToken):
    reason = "bad_signature"


class BadAlgorithm(BadToken):
    """Signed with an algorithm the provider does not advertise, ``none``, or HMAC."""

    reason = "bad_algorithm"


class UnknownKey(BadToken):
    """Signed with a key that is not in the provider's JWKS, even after a refetch."""

    reason = "unknown_key"


class WrongIssuer(BadToken):
    reason = "wrong_issuer"


class WrongAudience(BadToken):
    """``aud`` does not hold this client, or ``azp`` names another one."""

    reason = "wrong_audience"


class Expired(BadToken):
    reason = "expired"


class IssuedInFuture(BadToken):
    """``iat`` (or ``nbf``) is later than now plus ``clock_skew_s``."""

    reason = "issued_in_future"


class NonceMismatch(BadToken):
    reason = "nonce_mismatch"


class NoUsername(DirectoryRefused):
    """Neither the ID token nor userinfo carries ``username_claim`` (no silent ``sub``)."""

    reason = "no_username"


class BadUsername(DirectoryRefused):
    """The user name claim is not a name deepseekd accepts (``ldap.USERNAME``)."""

    reason = "bad_username"


class UserinfoMismatch(DirectoryRefused):
    """The userinfo endpoint answered for another ``sub`` than the ID token's."""

    reason = "userinfo_mismatch"


_CLAIM_ERRORS: dict[str, type[BadToken]] = {
    "iss": WrongIssuer,
    "aud": WrongAudience,
    "azp": WrongAudience,
    "exp": Expired,
    "iat": IssuedInFuture,
    "nbf": IssuedInFuture,
    "nonce": NonceMismatch,
}


@dataclass(frozen=True)
class OidcUser:
    subject: str
    issuer: str
    username: str
    display_name: str | None
    email: str | None
    groups: tuple[str, ...]
    """The values of ``groups_claim``, as the provider spells them."""
    amr: tuple[str, ...]
    acr: str | None
    id_token: str
    """Kept for RP-initiated logout (``id_token_hint``); never log it."""


@dataclass(frozen=True)
class PendingLogin:
    """What a sign-in must remember between ``begin()`` and ``finish()``; secret-ish (the
    PKCE verifier): keep it server-side or sealed, never in a plain cookie."""

    state: str
    nonce: str
    code_verifier: str
    created_at: float


class OidcClient:
    def __init__(self, cfg: OidcSettings, clock: Callable[[], float] = time.time) -> None:
        if not cfg.issuer.startswith("https://"):
            raise ValueError("auth.oidc.issuer: must be an https:// URL")
        if not cfg.client_id:
            raise ValueError("auth.oidc.client_id is empty")
        if not cfg.redirect_url:
            raise ValueError("auth.oidc.redirect_url is empty")
        if "openid" not in cfg.scopes:
            raise ValueError("auth.oidc.scopes: must include 'openid'")
        self._cfg = cfg
        self._clock = clock
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._keys_at = float("-inf")
        self._tls: ssl.SSLContext | None = None

    # -- discovery and HTTP ----------------------------------------------------------------

    async def discover(self) -> None:
        """Read the provider's discovery document (again) and keep it."""
        self._metadata = await self._discover()

    async def _discover(self) -> dict[str, Any]:
        url = self._cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
        meta = await self._get_json(url, "discovery")
        if meta.get("issuer") != self._cfg.issuer:
            raise IssuerMismatch(
                f"the provider's discovery document names issuer {meta.get('issuer')!r}, "
                "not auth.oidc.issuer"
            )
        for name in (*REQUIRED_ENDPOINTS, *OPTIONAL_ENDPOINTS):
            value = meta.get(name)
            if (value is not None or name in REQUIRED_ENDPOINTS) and not (
                isinstance(value, str) and value.startswith("https://")
            ):
                raise BadDiscovery(f"discovery: {name} is missing or not https://")
        if not _algorithms(meta):
            raise BadDiscovery("discovery: no asymmetric ID token signing algorithm offered")
        return meta

    async def _meta(self) -> dict[str, Any]:
        if self._metadata is None:
            self._metadata = await self._discover()
        return self._metadata

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            try:
                self._tls = ssl.create_default_context(cafile=self._cfg.ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise DirectoryUnavailable(
                    f"auth.oidc.ca_file: cannot load it ({type(exc).__name__})"
                ) from None
        return self._tls

    def _http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=self._tls_context(),
            timeout=self._cfg.timeout_s,
            headers={"Accept": "application/json"},
            follow_redirects=False,
        )

    async def _get_json(self, url: str, what: str, token: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            async with self._http() as http:
                resp = await http.get(url, headers=headers)
            resp.raise_for_status()
            data = resp.json()
        except httpx.HTTPStatusError as exc:
            raise DirectoryUnavailable(
                f"provider {what}: HTTP {exc.response.status_code}"
            ) from None
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            raise DirectoryUnavailable(
                f"provider unavailable ({what}): {type(exc).__name__}"
            ) from None
        except ValueError:
            raise DirectoryUnavailable(f"provider {what}: not JSON") from None
        if not isinstance(data, dict):
            raise DirectoryUnavailable(f"provider {what}: not a JSON object")
        return data

    def _client_secret(self) -> str:
        path = self._cfg.client_secret_file
        if not path:
            raise ClientRejected("auth.oidc.client_secret_file is empty")
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise DirectoryUnavailable(
                f"auth.oidc.client_secret_file: cannot read it ({exc.strerror})"
            ) from None

    # -- the flow ----------------------------------------------------------------------------

    async def begin(self) -> tuple[str, PendingLogin]:
        """The provider's authorization URL to send the browser to, and what to remember."""
        meta = await self._meta()
        pending = PendingLogin(
            state=generate_token(32),
            nonce=generate_token(32),
            code_verifier=generate_token(64),
            created_at=self._clock(),
        )
        url = prepare_grant_uri(
            meta["authorization_endpoint"],
            self._cfg.client_id,
            "code",
            redirect_uri=self._cfg.redirect_url,
            scope=list(self._cfg.scopes),
            state=pending.state,
            nonce=pending.nonce,
            code_challenge=create_s256_code_challenge(pending.code_verifier),
            code_challenge_method="S256",
        )
        return str(url), pending

    def code_from_callback(self, pending: PendingLogin, params: Mapping[str, str]) -> str:
        """The ``code`` of the provider's redirect back, once its ``state`` is this
        sign-in's; an ``error`` there (the user cancelled, access denied) is a refusal."""
        if "error" in params:
            error = params["error"] if ERROR_CODE.fullmatch(params["error"]) else "error"
            raise ProviderRefused(f"the provider answered {error}")
        state = params.get("state", "")
        if not hmac.compare_digest(state.encode(), pending.state.encode()):
            raise StateMismatch("the callback's state is not this sign-in's")
        code = params.get("code", "")
        if not code:
            raise CodeRefused("the callback carries no code")
        return code

    async def finish(self, pending: PendingLogin, code: str) -> OidcUser:
        """Redeem the code and verify the ID token; the user it names."""
        if self._clock() - pending.created_at > PENDING_TTL_S:
            raise LoginExpired("the sign-in took too long; start again")
        meta = await self._meta()
        tokens = await self._redeem(meta, pending, code)
        id_token = tokens["id_token"]
        access_token = tokens.get("access_token")
        claims = await self._verify(meta, id_token, pending.nonce, access_token)
        wanted = [c for c in (self._cfg.username_claim, self._cfg.groups_claim) if c]
        missing = [c for c in wanted if c not in claims]
        if missing and isinstance(access_token, str) and meta.get("userinfo_endpoint"):
            info = await self._get_json(meta["userinfo_endpoint"], "userinfo", access_token)
            if info.get("sub") != claims["sub"]:
                raise UserinfoMismatch("userinfo answered for another subject")
            claims = {**info, **claims}  # the signed ID token wins where both have a claim
        return self._user(claims, id_token)

    async def _redeem(
        self, meta: Mapping[str, Any], pending: PendingLogin, code: str
    ) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self._cfg.redirect_url,
            "code_verifier": pending.code_verifier,
        }
        # RFC 6749 §2.3.1: both halves form-encoded before Basic.
        auth = httpx.BasicAuth(
            quote(self._cfg.client_id, safe=""), quote(self._client_secret(), safe="")
        )
        try:
            async with self._http() as http:
                resp = await http.post(meta["token_endpoint"], data=form, auth=auth)
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            raise DirectoryUnavailable(
                f"provider unavailable (token): {type(exc).__name__}"
            ) from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or resp.status_code >= 500:
            raise DirectoryUnavailable(f"provider token endpoint: HTTP {resp.status_code}")
        error = body.get("error")
        error = error if isinstance(error, str) and ERROR_CODE.fullmatch(error) else "error"
        if resp.status_code in (401, 403) or error in ("invalid_client", "unauthorized_client"):
            raise ClientRejected(f"the provider refused auth.oidc.client_id or its secret: {error}")
        if resp.status_code != 200:
            raise CodeRefused(f"the provider refused the code: {error}")
        if not isinstance(body.get("id_token"), str):
            raise BadToken("the token response carries no ID token (is 'openid' in scopes?)")
        return body

    # -- the ID token ------------------------------------------------------------------------

    async def _key_set(self, meta: Mapping[str, Any], refresh: bool) -> KeySet:
        if self._keys is None or refresh:
            data = await self._get_json(meta["jwks_uri"], "jwks")
            try:
                keys = KeySet.import_key_set(data)  # type: ignore[arg-type]
            except (JoseError, ValueError, KeyError, TypeError):
                raise BadDiscovery("the provider's JWKS holds no usable key") from None
            self._keys, self._keys_at = keys, self._clock()
        return self._keys

    async def _verify(
        self, meta: Mapping[str, Any], id_token: str, nonce: str, access_token: object
    ) -> dict[str, Any]:
        registry = JWSRegistry(algorithms=_algorithms(meta), strict_check_header=False)
        try:
            token = _decode(id_token, await self._key_set(meta, refresh=False), registry)
        except InvalidKeyIdError:
            if self._clock() - self._keys_at < JWKS_REFETCH_S:
                raise UnknownKey("signed with a key the provider does not publish") from None
            try:  # the provider may have rotated its keys since they were fetched
                token = _decode(id_token, await self._key_set(meta, refresh=True), registry)
            except InvalidKeyIdError:
                raise UnknownKey("signed with a key the provider does not publish") from None
        params: dict[str, Any] = {"nonce": nonce, "client_id": self._cfg.client_id}
        if isinstance(access_token, str):
            params["access_token"] = access_token
        options = {
            "iss": {"essential": True, "value": self._cfg.issuer},
            "aud": {"essential": True, "value": self._cfg.client_id},
            "sub": {"essential": True},
        }
        claims = CodeIDToken(token.claims, token.header, options, params)
        try:
            claims.validate(now=int(self._clock()), leeway=self._cfg.clock_skew_s)
        except ExpiredTokenError:
            raise Expired("the ID token has expired") from None
        except ClaimError as exc:
            kind = _CLAIM_ERRORS.get(exc.claim, BadToken)
            raise kind(f"ID token claim {exc.claim!r} refused") from None
        except JoseError:
            raise BadToken("the ID token's claims are malformed") from None
        return dict(claims)

    def _user(self, claims: Mapping[str, Any], id_token: str) -> OidcUser:
        name_claim = self._cfg.username_claim
        username = claims.get(name_claim)
        if not isinstance(username, str) or not username:
            raise NoUsername(f"the provider sent no {name_claim!r} claim")
        if not USERNAME.fullmatch(username):
            raise BadUsername(f"the {name_claim!r} claim is not an accepted user name")
        groups_claim = self._cfg.groups_claim
        groups = _strings(claims.get(groups_claim), groups_claim) if groups_claim else ()
        roles_claim = self._cfg.roles_claim  # app roles are matched like groups
        groups += _strings(claims.get(roles_claim), roles_claim) if roles_claim else ()
        return OidcUser(
            subject=str(claims["sub"]),
            issuer=str(claims["iss"]),
            username=username,
            display_name=_text(claims.get("name")),
            email=_text(claims.get("email")),
            groups=tuple(dict.fromkeys(groups)),
            amr=_strings(claims.get("amr"), "amr"),
            acr=_text(claims.get("acr")),
            id_token=id_token,
        )

    # -- second factor and logout ------------------------------------------------------------

    def proves_mfa(self, user: OidcUser) -> bool:
        """Whether the provider says it checked a second factor (amr, or acr, as configured)."""
        if any(method in self._cfg.mfa_amr for method in user.amr):
            return True
        return user.acr is not None and user.acr in self._cfg.mfa_acr

    async def logout_url(self, id_token: str | None, post_logout_redirect_uri: str) -> str | None:
        """Where to send the browser to end the provider's session too (RP-initiated
        logout); None when the provider offers no ``end_session_endpoint``."""
        endpoint = (await self._meta()).get("end_session_endpoint")
        if not endpoint:
            return None
        params = [
            ("client_id", self._cfg.client_id),
            ("post_logout_redirect_uri", post_logout_redirect_uri),
        ]
        if id_token:
            params.insert(0, ("id_token_hint", id_token))
        return str(add_params_to_uri(endpoint, params))


def _algorithms(meta: Mapping[str, Any]) -> list[str]:
    """The ID token algorithms to accept: those advertised (RS256 when none are, as OIDC
    Discovery says), less ``none`` and HMAC (a JWKS holds no shared secret to check them)."""
    offered = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
    if not isinstance(offered, list):
        return []
    known = JWSRegistry.algorithms
    return [
        a
        for a in offered
        if isinstance(a, str) and a in known and a != "none" and not a.startswith("HS")
    ]


def _decode(id_token: str, keys: KeySet, registry: JWSRegistry) -> jwt.Token:
    """The token, its signature checked; InvalidKeyIdError when its key is not in ``keys``."""
    try:
        return jwt.decode(id_token, keys, registry=registry)
    except InvalidKeyIdError:
        raise
    except UnsupportedAlgorithmError:
        raise BadAlgorithm("the ID token's algorithm is not accepted") from None
    except BadSignatureError:
        raise BadSignature("the ID token's signature does not verify") from None
    except (JoseError, ValueError, TypeError, KeyError):
        raise BadToken("the ID token is malformed") from None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _strings(value: object, claim: str) -> tuple[str, ...]:
    """A claim holding a list of strings (one string counts as a list of one)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise BadToken(f"claim {claim!r} is not a list of strings")


__all__ = [
    "JWKS_REFETCH_S",
    "PENDING_TTL_S",
    "BadAlgorithm",
    "BadDiscovery",
    "BadSignature",
    "BadToken",
    "BadUsername",
    "ClientRejected",
    "CodeRefused",
    "DirectoryError",
    "DirectoryRefused",
    "DirectoryUnavailable",
    "Expired",
    "IssuedInFuture",
    "IssuerMismatch",
    "LoginExpired",
    "NoUsername",
    "NonceMismatch",
    "OidcClient",
    "OidcUser",
    "PendingLogin",
    "ProviderRefused",
    "StateMismatch",
    "UnknownKey",
    "UserinfoMismatch",
    "WrongAudience",
    "WrongIssuer",
]
