"""Who is calling: API keys, sessions, client certificates; sign-ins with a password (and,
for admins, a second factor); throttles and locks against guessing.

Guessing is slowed twice, neither of which lets a stranger lock anybody else out:

* per source address, in memory: more than ``auth.login_attempts_per_minute`` sign-in
  attempts from one address get 429 with Retry-After before any password is checked, so a
  flood neither burns the CPU on Argon2 nor writes to the database;
* per name, source address and path: ``auth.lockout_threshold`` refusals within the window
  lock that name from that address on that path ('password': the chat page and the
  console's password sign-in; 'key': an admin API key with a TOTP code). A stranger's wrong
  passwords lock only the stranger's address, and never the key-and-TOTP path. Names that
  do not exist are counted and locked exactly like those that do, so nothing is revealed.

Password hashes (Argon2id) are checked outside any transaction, a few at a time in worker
threads. The password of a directory account (and of a name with no account yet, when LDAP
is configured) is the directory's (``directory_login``); a person the OpenID provider
vouched for comes in through ``provider_login`` and, for an admin owing this daemon's TOTP
code, ``totp_login`` (``sso``). Every sign-in, refused or not, is audited with its source
address in the transaction that decides it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import zoneinfo
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from deepseekd.config import AuthSettings, QuotaSettings
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import AuthFailed, Forbidden, Invalid
from deepseekd.domain.identity import Identity
from deepseekd.security import passwords, totp
from deepseekd.security.apikeys import hash_api_key, new_session_token
from deepseekd.services.accounts import USER_NAME_RE, AccountService
from deepseekd.services.audit import AuditLog
from deepseekd.services.directory_login import DirectorySignIn, External
from deepseekd.services.rights import GroupRights, split_groups
from deepseekd.services.throttle import SourceThrottle
from deepseekd.store import Tx
from deepseekd.store import accounts as repo
from deepseekd.store.db import Database
from deepseekd.store.schema import User
from deepseekd.store.writer import after_commit

log = logging.getLogger("deepseekd.auth")

HASH_WORKERS = 2
"""Password checks running at once; more wait their turn (each takes ~20 ms of one core)."""
UNKNOWN_SOURCE = "unknown"
PASSWORD, KEY = "password", "key"
"""The sign-in paths a lock applies to."""


def _identity(
    rights: GroupRights, row: Any, via: str, key_id: int | None = None, **more: Any
) -> Identity:
    """Who ``row`` (a user, or the key lookup's row) is on a call made ``via``: with the
    rights of their directory groups."""
    groups = split_groups(row.groups)
    req, tok = rights.limits(groups, (row.daily_request_limit, row.daily_token_limit))
    return Identity(row.id, row.name, row.role, via, key_id, req, tok, groups=groups, **more)


def _session_identity(
    rights: GroupRights, user: User, kind: str, key_id: int | None = None
) -> Identity:
    """Who a session of ``kind`` ('admin' or 'web') proves the caller to be."""
    return _identity(
        rights,
        user,
        "session" if kind == "admin" else "web_session",
        password_change_required=bool(user.must_change_password),
        session_key_id=key_id,
        account_source=user.source or "local",
    )


class AuthService:
    def __init__(
        self,
        db: Database,
        cfg: AuthSettings,
        clock: Callable[[], float],
        audit: AuditLog,
        accounts: AccountService,
        quota: QuotaSettings | None = None,
        directory: DirectorySignIn | None = None,
    ) -> None:
        self._db = db
        self._cfg = cfg
        self._now = clock
        self._audit = audit
        self._accounts = accounts
        self.directory = directory or DirectorySignIn(
            db, cfg, audit, GroupRights(cfg.group, cfg.directory_default_role), clock
        )
        self._rights = self.directory.rights
        self._tz = zoneinfo.ZoneInfo((quota or QuotaSettings()).timezone)
        self._hashing = asyncio.Semaphore(HASH_WORKERS)
        self.throttle = SourceThrottle(cfg.login_attempts_per_minute)
        self.on_lockout: Callable[[], None] = lambda: None
        self.acts_as_admin: Callable[[int, str], Awaitable[bool]] = _never
        """An active admin-scope break-glass makes the console sign-in accept a non-admin."""

    async def _verify_password(self, stored_hash: str | None, password: str) -> bool:
        async with self._hashing:
            return await asyncio.to_thread(passwords.verify_password, stored_hash, password)

    # -- every request -----------------------------------------------------------------

    async def authenticate_key(self, key: str) -> Identity | None:
        """The identity behind an API key; None for unknown, revoked or disabled. Read on
        every request: one prebuilt statement, in one hop."""
        digest = hash_api_key(key)
        row = await self._db.read("auth.key", lambda s: repo.key_identity(s, digest))
        if row is None:
            return None
        return _identity(self._rights, row, "api_key", row.key_id)

    async def authenticate_user_name(self, name: str, *, via: str) -> Identity | None:
        """An identity proven outside the database (a verified client certificate's CN)."""
        if not USER_NAME_RE.fullmatch(name):
            return None
        user = await self._db.read("auth.user", lambda s: repo.user_by_name(s, name))
        if user is None or user.disabled:
            return None
        return _identity(self._rights, user, via)

    async def authenticate_session(self, token: str, kind: str = "admin") -> Identity | None:
        """A session of that kind that has not ended, idled out, outlived
        ``auth.session_max_hours`` or lost the API key that opened it; use extends it."""
        now = self._now()
        idle = (
            self._cfg.session_idle_minutes
            if kind == "admin"
            else self._cfg.web_session_idle_minutes
        ) * 60
        digest = hash_api_key(token)

        def touch(s: Tx) -> Identity | None:
            found = repo.session_with_user(s, digest, kind)
            if found is None:
                return None
            sess, user = found
            over = (
                sess.ended_at is not None
                or user.disabled
                or now - sess.last_seen_at > idle
                or now - sess.created_at > self._cfg.session_max_hours * 3600
                or (sess.key_id is not None and not repo.key_active(s, sess.key_id))
            )
            if over:
                if sess.ended_at is None:
                    sess.ended_at = now
                return None
            sess.last_seen_at = now
            return _session_identity(self._rights, user, kind, sess.key_id)

        return await self._db.write("auth.session", touch)

    # -- sign-ins ----------------------------------------------------------------------

    async def login(
        self,
        username: object,
        *,
        password: object = None,
        api_key: object = None,
        code: object = None,
        source: str | None = None,
    ) -> tuple[str, Identity]:
        """Open an admin session: a password or API key plus a TOTP code. Raises AuthFailed
        (or RateLimited for an address over its attempts)."""
        src, name = source or UNKNOWN_SOURCE, username if isinstance(username, str) else ""
        self.throttle.check(src)
        by_key = not (isinstance(password, str) and password) and isinstance(api_key, str)
        path = KEY if by_key else PASSWORD
        user = await self._before(name, src, path)
        if by_key:
            # Both known and unknown names look the key up (no Argon2 on this path at all),
            # so the time taken tells nothing about which names exist.
            digest = hash_api_key(str(api_key))
            checked = await self._db.read(
                "auth.login.key",
                lambda s: repo.key_of_user(s, digest, user.id if user is not None else -1),
            )
            ext = None
        else:
            checked, ext = await self._password_ok(user, name, password)
        acting = user is not None and await self.acts_as_admin(user.id, user.name)

        def decide(s: Tx) -> tuple[User | None, str | None, str | None]:
            fresh, reason = self._account(s, user, ext, src)
            if reason is not None:
                pass  # the directory's account may not sign in (said why)
            elif fresh is None:
                reason = "unknown user"
            elif fresh.disabled or (fresh.role != "admin" and not acting):
                reason = "not an active admin"
            elif not checked:
                reason = "wrong password or key"
            else:
                reason = self._check_code(fresh, code, s, now=self._now())
            if reason is not None and reason != "not an active admin":
                self._refused(s, name, src, path, fresh)
            token = None
            if reason is None and fresh is not None and fresh.must_change_password:
                reason = "password change required"
            elif reason is None and fresh is not None:
                key_id = repo.key_id_of(s, hash_api_key(str(api_key))) if by_key else None
                token = self._open_session(s, fresh, "admin", key_id)
            self._audit_login(s, "admin", name, fresh, reason, src)
            return fresh, reason, token

        fresh, reason, token = await self._audit.transaction("auth.login", decide, "auth.login")
        if reason == "password change required":
            raise Forbidden(
                "password_change_required: this password was set by an admin; "
                "sign in on the chat page (/) and choose a new one first",
                code="password_change_required",
            )
        return self._result("admin", fresh, reason, token)

    async def web_login(
        self, username: object, password: object, source: str | None = None
    ) -> tuple[str, Identity]:
        """Open a browser session with a password (chat page, auditor view): no second
        factor, so it never opens /admin/api. Same throttles, locks and messages as admin
        sign-ins."""
        src, name = source or UNKNOWN_SOURCE, username if isinstance(username, str) else ""
        self.throttle.check(src)
        user = await self._before(name, src, PASSWORD)
        ok, ext = await self._password_ok(user, name, password)

        def decide(s: Tx) -> tuple[User | None, str | None, str | None]:
            fresh, reason = self._account(s, user, ext, src)
            if reason is not None:
                pass  # the directory's account may not sign in (said why)
            elif fresh is None:
                reason = "unknown user"
            elif fresh.disabled or fresh.role == "metrics":
                reason = "not an active user"
            elif not ok:
                reason = "wrong password"
            if reason in ("unknown user", "wrong password"):
                self._refused(s, name, src, PASSWORD, fresh)
            token = self._open_session(s, fresh, "web") if reason is None and fresh else None
            self._audit_login(s, "web", name, fresh, reason, src)
            return fresh, reason, token

        fresh, reason, token = await self._audit.transaction(
            "auth.web_login", decide, "auth.web_login"
        )
        return self._result("web", fresh, reason, token)

    async def provider_login(
        self, ext: External, kind: str, source: str, *, mfa_proven: bool = False
    ) -> tuple[str | None, Identity]:
        """A session for a person the OpenID provider vouched for: ``kind`` 'web' (chat
        page), 'admin' (console; needs the provider's proof of a second factor) or 'totp'
        (an admin who still has to give this daemon's code: no session yet, see
        ``totp_login``). Raises AuthFailed."""

        def decide(s: Tx) -> tuple[User | None, str | None, str | None]:
            fresh, reason = self.directory.admit(s, ext, source)
            if reason is None:
                reason = _provider_refusal(fresh, kind, mfa_proven)
            token = None
            if reason is None and fresh is not None and kind != "totp":
                token = self._open_session(s, fresh, kind)
            if reason is not None or kind != "totp":
                shown = "admin" if kind == "totp" else kind
                self._audit_login(s, shown, ext.name, fresh, reason, source, how=ext.source)
            return fresh, reason, token

        fresh, reason, token = await self._audit.transaction(
            "auth.provider_login", decide, "auth.provider_login"
        )
        if kind == "totp" and reason is None and fresh is not None:
            return None, _session_identity(self._rights, fresh, "admin")
        return self._result("web" if kind == "web" else "admin", fresh, reason, token)

    async def totp_login(self, user_id: int, code: object, source: str) -> tuple[str, Identity]:
        """The second step of an admin's sign-in with the OpenID provider: this daemon's
        TOTP code. Wrong codes count towards the lock like any others."""
        self.throttle.check(source)

        def decide(s: Tx) -> tuple[User | None, str | None, str | None]:
            fresh = repo.user_by_id(s, user_id)
            name = fresh.name if fresh is not None else ""
            until = repo.lock_until(s, name, source, KEY)
            if until is not None and until > self._now():
                return fresh, "locked", None
            reason = _provider_refusal(fresh, "totp", False)
            if reason is None and fresh is not None:
                reason = self._check_code(fresh, code, s, now=self._now())
                if reason is not None:
                    self._refused(s, name, source, KEY, fresh)
            token = None
            if reason is None and fresh is not None:
                token = self._open_session(s, fresh, "admin")
            self._audit_login(s, "admin", name, fresh, reason, source, how="oidc")
            return fresh, reason, token

        fresh, reason, token = await self._audit.transaction(
            "auth.totp_login", decide, "auth.login"
        )
        return self._result("admin", fresh, reason, token)

    async def _password_ok(
        self, user: User | None, name: str, password: object
    ) -> tuple[bool, External | None]:
        """Whether the password is right: the directory's for directory accounts (and for
        names with no account yet, when a directory is configured), else the local hash.
        Unavailable (503) when the directory cannot be asked."""
        given = password if isinstance(password, str) else ""
        if self.directory.handles(user):
            ext = await self.directory.check_password(name, given)
            return ext is not None, ext
        return await self._verify_password(user.password_hash if user else None, given), None

    def _account(
        self, s: Tx, user: User | None, ext: External | None, source: str
    ) -> tuple[User | None, str | None]:
        """The account signing in, read again in the deciding transaction (a directory
        account created or refreshed there); or why it may not sign in."""
        if ext is not None:
            return self.directory.admit(s, ext, source)
        return (repo.user_by_id(s, user.id) if user is not None else None), None

    async def _before(self, name: str, source: str, path: str) -> User | None:
        """Refuse a locked (name, source, path) with when to come back; else the user (None
        for an unknown name), read in the same transaction."""
        now = self._now()

        def read(s: Tx) -> tuple[float | None, User | None]:
            until = repo.lock_until(s, name[:64], source, path)
            user = repo.user_by_name(s, name) if USER_NAME_RE.fullmatch(name) else None
            return until, user

        until, user = await self._db.read("auth.login.check", read)
        if until is not None and until > now:
            raise self.locked(until)
        return user

    def locked(self, until: float) -> AuthFailed:
        """The refusal of a locked sign-in: the same words for every name, existing or not."""
        at = dt.datetime.fromtimestamp(until, self._tz)
        # Rounded up: "after 14:05" must not be a minute too early.
        if at.second or at.microsecond:
            at = at.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        return AuthFailed(
            "locked",
            locked_until=until,
            message=f"too many attempts; try again after {at:%H:%M} "
            f"({self._tz.key}) or ask IT to unlock the account",
        )

    def _refused(self, s: Tx, name: str, source: str, path: str, user: User | None) -> None:
        """Record one refusal; lock (name, source, path) when it was one too many."""
        now = self._now()
        repo.add_attempt(s, name[:64], source, path, now)
        count = repo.attempts_since(
            s, name[:64], source, path, now - self._cfg.lockout_window_minutes * 60
        )
        if count < self._cfg.lockout_threshold:
            return
        until = now + self._cfg.lockout_minutes * 60
        repo.set_lock(s, name[:64], source, path, until)
        log.warning(
            "sign-in locked",
            extra={
                "user_id": user.id if user else None,
                "path": path,
                "failures": count,
                "minutes": self._cfg.lockout_minutes,
            },
        )
        self._audit.append_in(
            s,
            Event(
                action="account.lockout",
                outcome="locked",
                actor=user.name if user else None,
                actor_id=user.id if user else None,
                role=user.role if user else None,
                target=f"user:{user.name}" if user else "unknown user",
                client=source,
                detail=f"{count} refused {path} sign-ins from this address; locked for "
                f"{self._cfg.lockout_minutes} minutes",
            ),
        )
        after_commit(s, lambda: self.on_lockout())

    def _open_session(self, s: Tx, user: User, kind: str, key_id: int | None = None) -> str:
        token = new_session_token()
        repo.add_session(s, hash_api_key(token), user.id, kind, self._now(), key_id)
        return token

    def _audit_login(
        self,
        s: Tx,
        kind: str,
        name: str,
        user: User | None,
        reason: str | None,
        source: str,
        how: str | None = None,
    ) -> None:
        """One ``web.login`` / ``admin.login`` event; ``how`` names a directory or
        provider that vouched for the user ('ldap', 'oidc')."""
        if how is None and user is not None and user.source != "local":
            how = user.source
        detail = reason if how is None else f"via {how}" + (f": {reason}" if reason else "")
        self._audit.append_in(
            s,
            Event(
                action=f"{kind}.login",
                outcome="ok" if reason is None else "denied",
                actor=user.name if user else None,
                actor_id=user.id if user else None,
                role=user.role if user else None,
                detail=detail,
                client=source,
                target=None if user else "unknown user",
            ),
        )

    def _result(
        self, kind: str, user: User | None, reason: str | None, token: str | None
    ) -> tuple[str, Identity]:
        if reason is not None or user is None or token is None:
            log.warning(
                "login refused",
                extra={"kind": kind, "reason": reason, "user_id": user.id if user else None},
            )
            raise AuthFailed(reason or "refused")
        log.info("login", extra={"kind": kind, "user_id": user.id})
        return token, _session_identity(self._rights, user, kind)

    async def verify_second_factor(
        self, identity: Identity, code: object, source: str | None = None
    ) -> None:
        """An X-TOTP code on a single admin call made with an API key (the 'key' path).
        Raises AuthFailed."""
        src = source or identity.client or UNKNOWN_SOURCE
        now = self._now()

        def check(s: Tx) -> tuple[str | None, float | None]:
            until = repo.lock_until(s, identity.name, src, KEY)
            if until is not None and until > now:
                return "locked", until
            user = repo.user_by_id(s, identity.user_id)
            if user is None or user.disabled:
                reason: str | None = "not an active admin"
            else:
                reason = self._check_code(user, code, s, now=now)
                if reason is not None:
                    self._refused(s, identity.name, src, KEY, user)
            if reason is not None:
                self._audit.append_in(
                    s, Event.by(identity, "admin.totp", outcome="denied", detail=reason, client=src)
                )
            return reason, None

        reason, until = await self._audit.transaction(
            "auth.second_factor", check, "auth.second_factor"
        )
        if until is not None:
            raise self.locked(until)
        if reason is not None:
            log.warning(
                "second factor refused", extra={"reason": reason, "user_id": identity.user_id}
            )
            raise AuthFailed(reason)

    def _check_code(self, user: User, code: object, s: Tx, *, now: float) -> str | None:
        """None when ``code`` is a fresh TOTP; else the reason."""
        if not user.totp_secret:
            return "no second factor enrolled"
        secret = self._accounts.open_totp(user.id, user.totp_secret)
        step = totp.matching_step(secret, code if isinstance(code, str) else "", now)
        if step is None:
            return "wrong code"
        if not repo.claim_totp_step(s, user.id, step):  # each step is accepted once
            log.warning("totp replay rejected", extra={"user_id": user.id})
            return "replayed code"
        return None

    # -- sessions and passwords ----------------------------------------------------------

    async def keep_provider_hint(self, token: str, hint: str) -> None:
        """Keep a provider session's sealed ID token with the session (for its logout)."""
        await self._db.write(
            "auth.provider_hint",
            lambda s: repo.set_provider_hint(s, hash_api_key(token), hint),
        )

    async def provider_hint(self, token: str) -> str | None:
        return await self._db.read(
            "auth.provider_hint", lambda s: repo.provider_hint(s, hash_api_key(token))
        )

    async def logout(self, token: str, who: Identity | None = None) -> None:
        """End the session; audited when it was open."""
        now = self._now()
        kind = "admin" if who is not None and who.via == "session" else "web"

        def end(s: Tx) -> None:
            if repo.end_session(s, hash_api_key(token), now) and who is not None:
                self._audit.append_in(s, Event.by(who, f"{kind}.logout"))

        await self._audit.transaction("auth.logout", end, "auth.logout")

    async def change_password(
        self, who: Identity, current: str, new: str, session_token: str | None = None
    ) -> None:
        """Self-service: the current password, then a new one (12-128 characters). Other
        sessions of the user end; the one that asked stays."""
        problem = passwords.check_password_rules(new)
        if problem:
            raise Invalid(f"new_password: {problem}", field="new_password")
        if new == current:
            raise Invalid(
                "new_password: must differ from the current password", field="new_password"
            )
        src = who.client or UNKNOWN_SOURCE
        self.throttle.check(src)
        user = await self._before(who.name, src, PASSWORD)
        if user is not None and user.source != "local":
            raise Invalid(
                "current_password: this account's password is the hospital directory's; "
                "change it there",
                field="current_password",
                code="directory_account",
            )
        ok = user is not None and await self._verify_password(user.password_hash, current)
        new_hash = await asyncio.to_thread(passwords.hash_password, new) if ok else None
        keep = hash_api_key(session_token) if session_token else None

        def change(s: Tx) -> bool:
            fresh = repo.user_by_id(s, who.user_id)
            if fresh is None or fresh.disabled or not ok:
                self._refused(s, who.name, src, PASSWORD, fresh)
                self._audit.append_in(
                    s,
                    Event.by(
                        who, "user.password_change", outcome="denied", detail="wrong password"
                    ),
                )
                return False
            fresh.password_hash, fresh.must_change_password = new_hash, False
            ended = repo.end_sessions_of(s, fresh.id, self._now(), keep=keep)
            self._audit.append_in(
                s,
                Event.by(
                    who,
                    "user.password_change",
                    target=f"user:{who.name}",
                    detail=f"{ended} other sessions ended",
                ),
            )
            return True

        if not await self._audit.transaction(
            "user.password_change", change, "user.password_change"
        ):
            raise AuthFailed("wrong password", message="the current password is wrong")

    async def prune(self) -> None:
        """Forget refusals older than the lockout window, ended locks, long-ended sessions."""
        now = self._now()
        await self._db.write(
            "auth.prune",
            lambda s: repo.prune(s, now - self._cfg.lockout_window_minutes * 60, now - 86400, now),
        )


def _provider_refusal(user: User | None, kind: str, mfa_proven: bool) -> str | None:
    """Why a person the OpenID provider vouched for may not open a session of ``kind``."""
    if user is None:
        return "unknown user"
    if user.disabled or user.role == "metrics":
        return "not an active user"
    if kind == "web":
        return None
    if user.role != "admin":
        return "not an active admin"
    if kind == "admin" and not mfa_proven:
        return "no second factor proven by the provider"
    if kind == "totp" and not user.totp_secret:
        return "no second factor enrolled"
    return None


def with_client(who: Identity, client: str | None) -> Identity:
    """``who`` as seen on a call from ``client``."""
    return replace(who, client=client)


async def _never(_user_id: int, _name: str) -> bool:
    return False
