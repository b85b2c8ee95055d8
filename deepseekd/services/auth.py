"""Who is calling: API keys, sessions, client certificates; logins with a password (and,
for admins, a second factor); lockout after repeated failures.

Password hashes (Argon2id) are checked outside any transaction, a few at a time in worker
threads, so a flood of logins neither holds the database's write lock nor the event loop.
Every login attempt, refused or not, is audited in the transaction that decides it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from deepseekd.config import AuthSettings
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import AuthFailed
from deepseekd.domain.identity import Identity
from deepseekd.security import passwords, totp
from deepseekd.security.apikeys import hash_api_key, new_session_token
from deepseekd.services.accounts import NAME_RE, AccountService
from deepseekd.services.audit import AuditLog
from deepseekd.store import Tx
from deepseekd.store import accounts as repo
from deepseekd.store.db import Database
from deepseekd.store.schema import User
from deepseekd.store.writer import after_commit

log = logging.getLogger("deepseekd.auth")

HASH_WORKERS = 2
"""Password checks running at once; more wait their turn (each takes ~20 ms of one core)."""


def _session_identity(user: User, kind: str) -> Identity:
    """Who a session of ``kind`` ('admin' or 'web') proves the caller to be."""
    return Identity(
        user.id,
        user.name,
        user.role,
        "session" if kind == "admin" else "web_session",
        None,
        user.daily_request_limit,
        user.daily_token_limit,
    )


class AuthService:
    def __init__(
        self,
        db: Database,
        cfg: AuthSettings,
        clock: Callable[[], float],
        audit: AuditLog,
        accounts: AccountService,
    ) -> None:
        self._db = db
        self._cfg = cfg
        self._now = clock
        self._audit = audit
        self._accounts = accounts
        self._hashing = asyncio.Semaphore(HASH_WORKERS)
        self.on_lockout: Callable[[], None] = lambda: None

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
        return Identity(
            row.id,
            row.name,
            row.role,
            "api_key",
            row.key_id,
            row.daily_request_limit,
            row.daily_token_limit,
        )

    async def authenticate_user_name(self, name: str, *, via: str) -> Identity | None:
        """An identity proven outside the database (a verified client certificate's CN)."""
        if not NAME_RE.fullmatch(name):
            return None
        user = await self._db.read("auth.user", lambda s: repo.user_by_name(s, name))
        if user is None or user.disabled:
            return None
        return Identity(
            user.id,
            user.name,
            user.role,
            via,
            None,
            user.daily_request_limit,
            user.daily_token_limit,
        )

    async def authenticate_session(self, token: str, kind: str = "admin") -> Identity | None:
        """A session of that kind that has not ended nor idled out; touching it extends it."""
        now = self._now()
        idle = (
            self._cfg.session_idle_minutes
            if kind == "admin"
            else self._cfg.web_session_idle_minutes
        ) * 60
        digest = hash_api_key(token)

        def touch(s: Tx) -> User | None:
            found = repo.session_with_user(s, digest, kind)
            if found is None:
                return None
            sess, user = found
            if sess.ended_at is not None or user.disabled or now - sess.last_seen_at > idle:
                if sess.ended_at is None:
                    sess.ended_at = now
                return None
            sess.last_seen_at = now
            return user

        user = await self._db.write("auth.session", touch)
        if user is None:
            return None
        return _session_identity(user, kind)

    # -- logins ------------------------------------------------------------------------

    async def login(
        self,
        username: object,
        *,
        password: object = None,
        api_key: object = None,
        code: object = None,
    ) -> tuple[str, Identity]:
        """Open an admin session: a password or API key plus a TOTP code. Raises AuthFailed."""
        now = self._now()
        user = await self._find(username)
        key_digest = None
        if isinstance(password, str) and password:
            ok = await self._verify_password(user.password_hash if user else None, password)
        elif isinstance(api_key, str) and api_key and user is not None:
            ok, key_digest = False, hash_api_key(api_key)
        else:
            await self._verify_password(None, "x")  # same cost as a wrong password
            ok = False

        def decide(s: Tx) -> tuple[User | None, str | None, str | None]:
            fresh = repo.user_by_id(s, user.id) if user is not None else None
            checked = ok or (
                fresh is not None
                and key_digest is not None
                and repo.key_of_user(s, key_digest, fresh.id)
            )
            reason = None
            if fresh is None:
                reason = "unknown user"
            elif fresh.locked_until and fresh.locked_until > now:
                reason = "locked"
            elif fresh.disabled or fresh.role != "admin":
                reason = "not an active admin"
            elif not checked:
                reason = "wrong password or key"
                self._record_failure(s, fresh, "password", now)
            else:
                reason = self._check_code(s, fresh, code, now)
            return fresh, reason, self._close_login(s, "admin", fresh, reason, now)

        fresh, reason, token = await self._db.write("auth.login", decide)
        return self._login_result("admin", fresh, reason, token)

    async def web_login(self, username: object, password: object) -> tuple[str, Identity]:
        """Open a browser session with a password (chat page, auditor view): no second
        factor, so it never opens /admin/api. Same lockout and messages as admin logins."""
        now = self._now()
        user = await self._find(username)
        ok = await self._verify_password(
            user.password_hash if user else None, password if isinstance(password, str) else ""
        )

        def decide(s: Tx) -> tuple[User | None, str | None, str | None]:
            fresh = repo.user_by_id(s, user.id) if user is not None else None
            reason = None
            if fresh is None:
                reason = "unknown user"
            elif fresh.locked_until and fresh.locked_until > now:
                reason = "locked"
            elif fresh.disabled or fresh.role == "metrics":
                reason = "not an active user"
            elif not ok:
                reason = "wrong password"
                self._record_failure(s, fresh, "password", now)
            return fresh, reason, self._close_login(s, "web", fresh, reason, now)

        fresh, reason, token = await self._db.write("auth.web_login", decide)
        return self._login_result("web", fresh, reason, token)

    async def _find(self, username: object) -> User | None:
        name = username if isinstance(username, str) else ""
        if not NAME_RE.fullmatch(name):
            return None
        return await self._db.read("auth.user", lambda s: repo.user_by_name(s, name))

    def _close_login(
        self, s: Tx, kind: str, user: User | None, reason: str | None, now: float
    ) -> str | None:
        """Open the session when nothing was wrong; audit the attempt either way."""
        token = None
        if reason is None:
            assert user is not None
            token = new_session_token()
            repo.add_session(s, hash_api_key(token), user.id, kind, now)
        self._audit.append_in(
            s,
            Event(
                action=f"{kind}.login",
                outcome="ok" if reason is None else "denied",
                actor=user.name if user else None,
                actor_id=user.id if user else None,
                role=user.role if user else None,
                detail=reason,
                target=None if user else "unknown user",
            ),
        )
        return token

    def _login_result(
        self, kind: str, user: User | None, reason: str | None, token: str | None
    ) -> tuple[str, Identity]:
        if reason is not None or user is None or token is None:
            log.warning(
                "login refused",
                extra={"kind": kind, "reason": reason, "user_id": user.id if user else None},
            )
            raise AuthFailed(reason or "refused")
        log.info("login", extra={"kind": kind, "user_id": user.id})
        return token, _session_identity(user, kind)

    async def verify_second_factor(self, identity: Identity, code: object) -> None:
        """An X-TOTP code on a single admin call made with an API key. Raises AuthFailed."""
        now = self._now()

        def check(s: Tx) -> str | None:
            user = repo.user_by_id(s, identity.user_id)
            if user is None or user.disabled:
                reason: str | None = "not an active admin"
            elif user.locked_until and user.locked_until > now:
                reason = "locked"
            else:
                reason = self._check_code(s, user, code, now)
            if reason is not None:
                self._audit.append_in(
                    s, Event.by(identity, "admin.totp", outcome="denied", detail=reason)
                )
            return reason

        reason = await self._db.write("auth.second_factor", check)
        if reason is not None:
            log.warning(
                "second factor refused", extra={"reason": reason, "user_id": identity.user_id}
            )
            raise AuthFailed(reason)

    def _check_code(self, s: Tx, user: User, code: object, now: float) -> str | None:
        """None when ``code`` is a fresh TOTP; else the reason (the failure is recorded)."""
        if not user.totp_secret:
            return "no second factor enrolled"
        secret = self._accounts.open_totp(user.id, user.totp_secret)
        step = totp.matching_step(secret, code if isinstance(code, str) else "", now)
        if step is None:
            self._record_failure(s, user, "totp", now)
            return "wrong code"
        if not repo.claim_totp_step(s, user.id, step):  # each step is accepted once
            log.warning("totp replay rejected", extra={"user_id": user.id})
            self._record_failure(s, user, "totp", now)
            return "replayed code"
        return None

    def _record_failure(self, s: Tx, user: User, kind: str, now: float) -> None:
        """Record one failure; lock the account when it was one too many."""
        repo.add_failure(s, user.id, now, kind)
        count = repo.failures_since(s, user.id, now - self._cfg.lockout_window_minutes * 60)
        if count >= self._cfg.lockout_threshold and not (
            user.locked_until and user.locked_until > now
        ):
            user.locked_until = now + self._cfg.lockout_minutes * 60
            log.warning(
                "account locked",
                extra={"user_id": user.id, "failures": count, "minutes": self._cfg.lockout_minutes},
            )
            self._audit.append_in(
                s,
                Event(
                    action="account.lockout",
                    outcome="locked",
                    actor=user.name,
                    actor_id=user.id,
                    role=user.role,
                    target=f"user:{user.name}",
                    detail=f"{count} failures; locked for {self._cfg.lockout_minutes} minutes",
                ),
            )
            after_commit(s, lambda: self.on_lockout())

    async def logout(self, token: str) -> None:
        await self._db.write(
            "auth.logout", lambda s: repo.end_session(s, hash_api_key(token), self._now())
        )

    async def prune(self) -> None:
        """Forget failures older than the lockout window and sessions long ended."""
        now = self._now()
        await self._db.write(
            "auth.prune",
            lambda s: repo.prune(s, now - self._cfg.lockout_window_minutes * 60, now - 86400),
        )
