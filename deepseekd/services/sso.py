"""Single sign-on with the site's OpenID provider: the browser leaves for the provider and
comes back with a code, which becomes a session here.

A sign-in is pending from ``start`` to ``finish`` (at most ``PENDING_TTL_S``), known by its
``state`` and bound to the browser that started it by a cookie, so a callback link sent to
someone else's browser does nothing. What it must remember (state, nonce, PKCE verifier)
is sealed into that cookie with the service's ``sso`` key (AES-GCM), and an admin's
ticket likewise: no replica holds it in memory, so a callback that a load balancer sends
to another replica sharing the database finishes there. Admins need a second factor: the
provider's (``amr`` / ``acr``, ``auth.admin_mfa = "idp"``), or this daemon's TOTP code,
asked for on the console with a one-time ticket (``TICKET_TTL_S``). Every refusal is
audited with its class (``oidc.login`` denied: ``state_mismatch``, ``nonce_mismatch``,
``unknown_key`` ...), never a token or a code. The provider's ID token is kept, sealed,
with the session for its RP-initiated logout, which any replica can then send.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

from deepseekd.config import AuthSettings
from deepseekd.directory.ldap import DirectoryRefused, DirectoryUnavailable
from deepseekd.directory.oidc import OidcClient, OidcUser, PendingLogin
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import AuthFailed, Unavailable
from deepseekd.domain.identity import Identity
from deepseekd.security.apikeys import hash_api_key
from deepseekd.security.keyring import Unreadable, open_sealed, seal
from deepseekd.services.audit import AuditLog
from deepseekd.services.auth import AuthService
from deepseekd.services.directory_login import External, local_name

log = logging.getLogger("deepseekd.sso")

PENDING_TTL_S = 600.0
TICKET_TTL_S = 120.0
TARGETS = ("chat", "admin")

EXPLAINED = {
    "state_mismatch": "This sign-in was not started in this browser, or it was already used. "
    "Start again from the sign-in page.",
    "login_expired": "This sign-in took too long. Start again from the sign-in page.",
    "provider_refused": "The identity provider did not sign you in.",
    "code_refused": "The identity provider refused this sign-in (it may have been used "
    "already). Start again from the sign-in page.",
    "bad_username": "Your identity provider account has a user name this server cannot use. "
    "Ask IT.",
    "no_username": "The identity provider did not say who you are. Ask IT.",
    "not_allowed": "Your account may not sign in here. Ask IT if you think it should.",
    "no_totp": "Your admin account has no second factor here yet: another admin enrols one "
    "(console: Users, Reset TOTP). Until then, use the chat page.",
    "not_configured": "Single sign-on is not configured on this server.",
}
TOKEN_PROBLEM = (
    "The identity provider's answer could not be verified, so you were not signed in. "
    "Ask IT if this happens again."
)


class SsoRefused(AuthFailed):
    """A provider sign-in refused; ``reason`` is its class, ``explanation`` the words for
    the person in front of the browser."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, message=EXPLAINED.get(reason, TOKEN_PROBLEM))
        self.explanation = EXPLAINED.get(reason, TOKEN_PROBLEM)


PENDING_AAD = b"sso-pending"
TICKET_AAD = b"sso-ticket"
HINT_AAD = b"sso-id-token"


@dataclass(frozen=True)
class Signed:
    """Where a finished sign-in leads: a session (``token``) or, for an admin who still
    owes this daemon's code, a ``ticket`` to redeem with it."""

    target: str
    identity: Identity
    token: str | None = None
    ticket: str | None = None


class SsoService:
    def __init__(
        self,
        client: OidcClient | None,
        auth: AuthService,
        audit: AuditLog,
        cfg: AuthSettings,
        clock: Callable[[], float],
        key: Callable[[], bytes],
    ) -> None:
        self._client = client
        self._auth = auth
        self._audit = audit
        self._cfg = cfg
        self._now = clock
        self._key = key
        self._redeemed: dict[str, float] = {}
        """Tickets this replica redeemed (hash -> expiry): each opens one session."""
        self.on_unavailable: Callable[[], None] = lambda: None

    @property
    def enabled(self) -> bool:
        return self._client is not None

    @property
    def label(self) -> str:
        return self._cfg.oidc.button_label

    def _oidc(self) -> OidcClient:
        if self._client is None:
            raise SsoRefused("not_configured")
        return self._client

    async def start(self, target: str) -> tuple[str, str]:
        """(the provider's URL to send the browser to, the cookie binding it: the pending
        sign-in, sealed)."""
        client = self._oidc()
        try:
            url, login = await client.begin()
        except DirectoryUnavailable as exc:
            raise self._down(exc) from None
        pending = {**asdict(login), "target": target if target in TARGETS else "chat"}
        return url, self._seal(pending, PENDING_AAD)

    def _seal(self, value: dict[str, Any], aad: bytes) -> str:
        raw = seal(self._key(), json.dumps(value, separators=(",", ":")).encode(), aad)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _open(self, token: object, aad: bytes) -> dict[str, Any] | None:
        if not isinstance(token, str) or not token or len(token) > 16384:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            value = json.loads(open_sealed(self._key(), raw, aad))
        except (ValueError, Unreadable):
            return None
        return value if isinstance(value, dict) else None

    def _down(self, exc: DirectoryUnavailable) -> Unavailable:
        self.on_unavailable()
        log.warning("identity provider unavailable", extra={"reason": exc.reason})
        return Unavailable(
            "identity_provider_unavailable: the identity provider cannot be reached or "
            "answered wrongly; try again shortly (local accounts still sign in)",
            code="identity_provider_unavailable",
            retry_after=30,
        )

    async def finish(self, params: Mapping[str, str], binding: str | None, source: str) -> Signed:
        """The provider's callback: a session, or an admin's ticket. Raises SsoRefused
        (audited) or Unavailable."""
        pending = self._open(binding, PENDING_AAD)
        login = _login(pending)
        if (
            pending is None
            or login is None
            or login.state != params.get("state")
            or self._now() - login.created_at > PENDING_TTL_S
        ):
            await self._refused("state_mismatch", source)
        client = self._oidc()
        try:
            user = await client.finish(login, client.code_from_callback(login, params))
        except DirectoryUnavailable as exc:
            await self._refused(exc.reason, source, down=exc)
        except DirectoryRefused as exc:
            await self._refused(exc.reason, source)
        return await self._sign_in(client, user, str(pending.get("target", "chat")), source)

    async def _sign_in(
        self, client: OidcClient, user: OidcUser, target: str, source: str
    ) -> Signed:
        name = local_name(user.username)
        if name is None:
            await self._refused("bad_username", source)
        ext = External("oidc", name, f"{user.issuer}|{user.subject}", user.groups)
        admin = "admin" if self._cfg.admin_mfa == "idp" else "totp"
        kind = "web" if target == "chat" else admin
        if target == "admin" and self._auth.directory.rights.role_for(ext.groups) == "auditor":
            kind, target = "web", "auditor"  # the console's auditor view: a browser session
        try:
            token, who = await self._auth.provider_login(
                ext, kind, source, mfa_proven=client.proves_mfa(user)
            )
        except AuthFailed as exc:
            raise SsoRefused(
                "not_allowed" if exc.reason != "no second factor enrolled" else "no_totp"
            ) from None
        if token is None:  # an admin who owes this daemon's TOTP code
            held = {
                "user_id": who.user_id,
                "expires": round(self._now() + TICKET_TTL_S, 3),
                "id_token": user.id_token,  # for the logout hint of the session it opens
            }
            return Signed(target, who, ticket=self._seal(held, TICKET_AAD))
        await self._remember(token, user.id_token)
        return Signed(target, who, token=token)

    async def redeem(self, ticket: object, code: object, source: str) -> tuple[str, Identity]:
        """An admin's ticket and TOTP code: an admin session. Raises AuthFailed."""
        now = self._now()
        for done in [k for k, expires in self._redeemed.items() if expires < now]:
            del self._redeemed[done]
        held = self._open(ticket, TICKET_AAD)
        if (
            held is None
            or not isinstance(held.get("user_id"), int)
            or not isinstance(held.get("expires"), (int, float))
            or held["expires"] < now
            or hash_api_key(str(ticket)) in self._redeemed
        ):
            raise AuthFailed("unknown or expired sign-in ticket")
        token, who = await self._auth.totp_login(held["user_id"], code, source)
        self._redeemed[hash_api_key(str(ticket))] = held["expires"]  # it opened a session
        if isinstance(held.get("id_token"), str) and held["id_token"]:
            await self._remember(token, held["id_token"])
        return token, who

    async def _remember(self, token: str, id_token: str) -> None:
        """The provider's ID token, sealed, kept with the session: any replica can then
        send the browser to the provider's logout with it as the hint."""
        await self._auth.keep_provider_hint(token, self._seal({"id_token": id_token}, HINT_AAD))

    async def logout_url(self, token: str | None, back_to: str) -> str | None:
        """The provider's end-session URL for a session opened through it (None for other
        sessions, or a provider without one)."""
        if self._client is None or token is None:
            return None
        kept = self._open(await self._auth.provider_hint(token), HINT_AAD)
        id_token = kept.get("id_token") if kept is not None else None
        if not isinstance(id_token, str) or not id_token:
            return None
        try:
            return await self._client.logout_url(id_token, back_to)
        except DirectoryUnavailable:
            return None

    async def _refused(
        self, reason: str, source: str, down: DirectoryUnavailable | None = None
    ) -> NoReturn:
        await self._audit.append(
            Event(action="oidc.login", outcome="denied", detail=reason, client=source)
        )
        log.warning("single sign-on refused", extra={"reason": reason})
        if down is not None:
            raise self._down(down)
        raise SsoRefused(reason)


def _login(pending: dict[str, Any] | None) -> PendingLogin | None:
    """The pending sign-in a sealed cookie carried (None: not one)."""
    if pending is None:
        return None
    try:
        return PendingLogin(
            state=str(pending["state"]),
            nonce=str(pending["nonce"]),
            code_verifier=str(pending["code_verifier"]),
            created_at=float(pending["created_at"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
