"""Users, API keys, admin sessions, TOTP and lockout. Repository queries take a session and
never commit; AccountService owns the transactions and is what the API and CLI call."""

from __future__ import annotations

import getpass
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from deepseekd.config import AuthSettings, QuotaSettings
from deepseekd.security import passwords, totp
from deepseekd.security.apikeys import KEY_PREFIX, generate_api_key, hash_api_key
from deepseekd.security.keyring import SecretBox
from deepseekd.store.audit import AuditLog, Event
from deepseekd.store.db import Database
from deepseekd.store.schema import ROLES, AdminSession, ApiKey, AuthFailure, User

log = logging.getLogger("deepseekd.auth")

_KEY_LOOKUP = (
    select(User.id, User.name, User.role, User.daily_request_limit, User.daily_token_limit,
           ApiKey.id.label("key_id"))
    .join(ApiKey, ApiKey.user_id == User.id)
    .where(ApiKey.key_hash == bindparam("digest"), ApiKey.revoked_at.is_(None),
           User.disabled.is_(False))
)

Clock = Callable[[], float]
SESSION_PREFIX = "dss-"
NAME_RE = re.compile(r"^[a-z][a-z0-9._-]{1,31}$")
NAME_RULE = "2-32 characters: lowercase letters, digits, '.', '_', '-', starting with a letter"
LABEL_RE = re.compile(r"^[\w .:@-]{0,64}$")
MAX_LIMIT = 10_000_000


class AccountError(Exception):
    """A request the caller can fix; ``field`` names the offending input."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


class AuthFailed(Exception):
    """Login or second factor refused. The message the client sees never says why."""

    PUBLIC_MESSAGE = "authentication failed: wrong credentials or code, or the account is locked"


@dataclass(frozen=True)
class Identity:
    user_id: int
    name: str
    role: str
    via: str
    """'api_key' or 'session'."""
    key_id: int | None = None
    daily_request_limit: int | None = None
    daily_token_limit: int | None = None


@dataclass(frozen=True)
class NewUser:
    name: str
    role: str
    api_key: str
    password: str | None
    totp_uri: str | None

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "role": self.role, "api_key": self.api_key}
        if self.password is not None:
            out["password"] = self.password
        if self.totp_uri is not None:
            out["totp_uri"] = self.totp_uri
        return out


@dataclass(frozen=True)
class UserInfo:
    name: str
    role: str
    disabled: bool
    daily_request_limit: int | None
    daily_token_limit: int | None
    totp_enrolled: bool
    locked: bool
    created_at: float
    active_keys: int


@dataclass(frozen=True)
class KeyInfo:
    id: int
    user: str
    prefix: str
    label: str
    created_at: float
    revoked_at: float | None


def cli_actor() -> str:
    """Who ran a CLI command, for the audit log (the service account under systemd)."""
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return "cli"


# --------------------------------------------------------------------------- validation


def check_name(name: object, field: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise AccountError(f"{field}: {NAME_RULE}", field=field)
    return name


def check_role(role: object) -> str:
    if role not in ROLES:
        raise AccountError(f"role: must be one of {', '.join(ROLES)}", field="role")
    return str(role)


def check_limit(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise AccountError(f"{field}: must be an integer from 0 to {MAX_LIMIT}, or null for the "
                           "default", field=field)
    return value


def check_label(label: object) -> str:
    if not isinstance(label, str) or not LABEL_RE.fullmatch(label):
        raise AccountError("label: up to 64 letters, digits, spaces or . : @ _ -", field="label")
    return label


# --------------------------------------------------------------------------- repositories


async def user_by_name(s: AsyncSession, name: str) -> User | None:
    return (await s.execute(select(User).where(User.name == name))).scalar_one_or_none()


async def _require_user(s: AsyncSession, name: str) -> User:
    user = await user_by_name(s, name)
    if user is None:
        raise AccountError(f"no user named '{name}'", field="name", status=404)
    return user


async def _insert_key(s: AsyncSession, user_id: int, label: str, now: float) -> tuple[int, str]:
    key = generate_api_key()
    row = ApiKey(user_id=user_id, key_hash=hash_api_key(key),
                 prefix=key[: len(KEY_PREFIX) + 6], label=label, created_at=now)
    s.add(row)
    await s.flush()
    return row.id, key


async def _record_failure(s: AsyncSession, user: User, kind: str, now: float,
                          cfg: AuthSettings, audit: "AuditLog | None") -> bool:
    """Record one failure; True when it locked the account."""
    s.add(AuthFailure(user_id=user.id, at=now, kind=kind))
    await s.flush()
    since = now - cfg.lockout_window_minutes * 60
    count = (await s.execute(
        select(func.count()).select_from(AuthFailure)
        .where(AuthFailure.user_id == user.id, AuthFailure.at > since)
    )).scalar_one()
    if count >= cfg.lockout_threshold and not (user.locked_until and user.locked_until > now):
        user.locked_until = now + cfg.lockout_minutes * 60
        log.warning("account locked", extra={"user_id": user.id, "failures": count,
                                             "minutes": cfg.lockout_minutes})
        if audit is not None:
            await audit.append_in(s, Event(
                action="account.lockout", outcome="locked", actor=user.name, actor_id=user.id,
                role=user.role, target=f"user:{user.name}",
                detail=f"{count} failures; locked for {cfg.lockout_minutes} minutes"))
        return True
    return False


# --------------------------------------------------------------------------- service


class AccountService:
    def __init__(self, db: Database, auth: AuthSettings, quota: QuotaSettings,
                 clock: Clock, audit: "AuditLog | None" = None,
                 totp_box: SecretBox | None = None) -> None:
        self._db = db
        self._totp_box = totp_box
        self._auth = auth
        self._quota = quota
        self._now = clock
        self._audit = audit
        self.on_lockout: Callable[[], None] = lambda: None

    def _seal_totp(self, user_id: int, secret: str) -> str:
        """TOTP seeds are stored sealed with the service's TOTP key (bound to the user)."""
        return self._totp_box.seal(secret, b"totp:%d" % user_id) if self._totp_box else secret

    def _open_totp(self, user_id: int, stored: str) -> str:
        return self._totp_box.open(stored, b"totp:%d" % user_id) if self._totp_box else stored

    async def _record(self, s: AsyncSession, action: str, by: Identity | None, target: str,
                      outcome: str = "ok", detail: str | None = None) -> None:
        """Audit an account change inside its own transaction (fail closed)."""
        if self._audit is None:
            return
        await self._audit.append_in(s, Event(
            action=action, outcome=outcome, actor=by.name if by else cli_actor(),
            actor_id=by.user_id if by else None, role=by.role if by else "cli",
            target=target, detail=detail))

    # -- users -----------------------------------------------------------------------

    async def create_user(self, name: object, role: object, *, daily_request_limit: object = None,
                          daily_token_limit: object = None, by: Identity | None = None) -> NewUser:
        name = check_name(name)
        role = check_role(role)
        req_limit = check_limit(daily_request_limit, "daily_request_limit")
        tok_limit = check_limit(daily_token_limit, "daily_token_limit")
        now = self._now()
        password = None if role == "metrics" else passwords.generate_password()
        secret = totp.new_secret() if role == "admin" else None
        pw_hash = passwords.hash_password(password) if password else None
        async with self._db.write() as s:
            if await user_by_name(s, name) is not None:
                raise AccountError(f"name: a user named '{name}' already exists", field="name",
                                   status=409)
            user = User(name=name, role=role, password_hash=pw_hash, totp_secret=None,
                        disabled=False, daily_request_limit=req_limit,
                        daily_token_limit=tok_limit, created_at=now)
            s.add(user)
            await s.flush()
            if secret is not None:
                user.totp_secret = self._seal_totp(user.id, secret)
            _, key = await _insert_key(s, user.id, "initial", now)
            await self._record(s, "user.create", by, f"user:{name}", detail=f"role={role}")
        uri = totp.provisioning_uri(secret, name, self._auth.totp_issuer) if secret else None
        log.info("user created", extra={"user": name, "role": role})
        return NewUser(name, role, key, password, uri)

    async def has_users(self) -> bool:
        async with self._db.read() as s:
            return (await s.execute(select(func.count()).select_from(User))).scalar_one() > 0

    async def list_users(self) -> list[UserInfo]:
        now = self._now()
        async with self._db.read() as s:
            active = (
                select(ApiKey.user_id, func.count().label("n"))
                .where(ApiKey.revoked_at.is_(None)).group_by(ApiKey.user_id).subquery()
            )
            rows = (await s.execute(
                select(User, func.coalesce(active.c.n, 0))
                .outerjoin(active, active.c.user_id == User.id).order_by(User.name)
            )).all()
        return [
            UserInfo(u.name, u.role, u.disabled, u.daily_request_limit, u.daily_token_limit,
                     u.totp_secret is not None, bool(u.locked_until and u.locked_until > now),
                     u.created_at, int(n))
            for u, n in rows
        ]

    async def disable_user(self, name: str, *, by: Identity | None = None) -> None:
        async with self._db.write() as s:
            user = await _require_user(s, name)
            user.disabled = True
            await self._record(s, "user.disable", by, f"user:{name}")
            # Open admin sessions end with the account.
            await s.execute(update(AdminSession).where(
                AdminSession.user_id == user.id, AdminSession.ended_at.is_(None)
            ).values(ended_at=self._now()))
        log.info("user disabled", extra={"user": name})

    async def set_limits(self, name: str, *, daily_request_limit: object = ...,
                         daily_token_limit: object = ..., by: Identity | None = None) -> UserInfo:
        async with self._db.write() as s:
            user = await _require_user(s, name)
            if daily_request_limit is not ...:
                user.daily_request_limit = check_limit(daily_request_limit, "daily_request_limit")
            if daily_token_limit is not ...:
                user.daily_token_limit = check_limit(daily_token_limit, "daily_token_limit")
            await self._record(s, "user.limits", by, f"user:{name}",
                               detail=f"requests={user.daily_request_limit} "
                                      f"tokens={user.daily_token_limit}")
        return next(u for u in await self.list_users() if u.name == name)

    async def reset_totp(self, name: str, *, by: Identity | None = None) -> str:
        secret = totp.new_secret()
        async with self._db.write() as s:
            user = await _require_user(s, name)
            if user.role != "admin":
                raise AccountError("name: only admins have a second factor", field="name")
            user.totp_secret = self._seal_totp(user.id, secret)
            await self._record(s, "user.totp_reset", by, f"user:{name}")
            user.totp_last_step = None
            await s.execute(update(AdminSession).where(
                AdminSession.user_id == user.id, AdminSession.ended_at.is_(None)
            ).values(ended_at=self._now()))
        return totp.provisioning_uri(secret, name, self._auth.totp_issuer)

    # -- keys ------------------------------------------------------------------------

    async def create_key(self, name: str, label: object = "", *,
                         by: Identity | None = None) -> tuple[int, str]:
        label = check_label(label)
        async with self._db.write() as s:
            user = await _require_user(s, name)
            if user.disabled:
                raise AccountError(f"name: user '{name}' is disabled", field="name", status=409)
            key_id, key = await _insert_key(s, user.id, label, self._now())
            await self._record(s, "key.create", by, f"user:{name}", detail=f"key_id={key_id}")
            return key_id, key

    async def revoke_key(self, key_id: int, *, by: Identity | None = None) -> None:
        async with self._db.write() as s:
            result = await s.execute(
                update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=self._now())
            )
            if result.rowcount == 0:
                raise AccountError(f"no active API key with id {key_id}", field="key_id", status=404)
            await self._record(s, "key.revoke", by, f"key:{key_id}")

    async def list_keys(self, name: str | None = None) -> list[KeyInfo]:
        async with self._db.read() as s:
            q = select(ApiKey, User.name).join(User, User.id == ApiKey.user_id).order_by(ApiKey.id)
            if name is not None:
                await _require_user(s, name)
                q = q.where(User.name == name)
            rows = (await s.execute(q)).all()
        return [KeyInfo(k.id, n, k.prefix, k.label, k.created_at, k.revoked_at) for k, n in rows]

    # -- authentication ----------------------------------------------------------------

    async def authenticate_key(self, key: str) -> Identity | None:
        """The identity behind an API key; None for unknown, revoked or disabled. Read on
        every request: one prebuilt statement, in one hop (``Database.run_read``)."""
        digest = hash_api_key(key)
        row = await self._db.run_read(
            lambda s: s.connection().execute(_KEY_LOOKUP, {"digest": digest}).first())
        if row is None:
            return None
        return Identity(row.id, row.name, row.role, "api_key", row.key_id,
                        row.daily_request_limit, row.daily_token_limit)

    async def authenticate_user_name(self, name: str, *, via: str) -> Identity | None:
        """An identity proven outside the database (a verified client certificate's CN)."""
        if not NAME_RE.fullmatch(name):
            return None
        async with self._db.read() as s:
            user = await user_by_name(s, name)
        if user is None or user.disabled:
            return None
        return Identity(user.id, user.name, user.role, via, None,
                        user.daily_request_limit, user.daily_token_limit)

    async def authenticate_session(self, token: str, kind: str = "admin") -> Identity | None:
        """A session of that kind that has not ended nor idled out; touching it extends it."""
        now = self._now()
        idle = (self._auth.session_idle_minutes if kind == "admin"
                else self._auth.web_session_idle_minutes) * 60
        async with self._db.write() as s:
            row = (await s.execute(
                select(AdminSession, User).join(User, User.id == AdminSession.user_id)
                .where(AdminSession.token_hash == hash_api_key(token), AdminSession.kind == kind)
            )).first()
            if row is None:
                return None
            sess, user = row
            if sess.ended_at is not None or user.disabled or now - sess.last_seen_at > idle:
                if sess.ended_at is None:
                    sess.ended_at = now
                return None
            sess.last_seen_at = now
        return Identity(user.id, user.name, user.role,
                        "session" if kind == "admin" else "web_session", None,
                        user.daily_request_limit, user.daily_token_limit)

    async def login(self, username: object, *, password: object = None, api_key: object = None,
                    code: object = None) -> tuple[str, Identity]:
        """Open an admin session: a password or API key plus a TOTP code. Raises AuthFailed."""
        now = self._now()
        name = username if isinstance(username, str) else ""
        async with self._db.write() as s:
            user = await user_by_name(s, name) if NAME_RE.fullmatch(name) else None
            if isinstance(password, str) and password:
                ok = passwords.verify_password(user.password_hash if user else None, password)
            elif isinstance(api_key, str) and api_key and user is not None:
                ok = (await s.execute(select(ApiKey.id).where(
                    ApiKey.key_hash == hash_api_key(api_key), ApiKey.user_id == user.id,
                    ApiKey.revoked_at.is_(None)))).first() is not None
            else:
                passwords.verify_password(None, "x")  # same cost as a wrong password
                ok = False
            reason = None
            if user is None:
                reason = "unknown user"
            elif user.locked_until and user.locked_until > now:
                reason = "locked"
            elif user.disabled or user.role != "admin":
                reason = "not an active admin"
            elif not ok:
                reason = "wrong password or key"
                if await _record_failure(s, user, "password", now, self._auth, self._audit):
                    self.on_lockout()
            else:
                reason = await self._check_code(s, user, code, now)
            token = await self._close_login(s, "admin", user, reason, now)
        return self._login_result("admin", user, reason, token)

    async def _close_login(self, s: AsyncSession, kind: str, user: User | None,
                           reason: str | None, now: float) -> str | None:
        """Open the session when nothing was wrong; audit the attempt either way."""
        token = None
        if reason is None:
            assert user is not None
            token = SESSION_PREFIX + secrets.token_urlsafe(32)
            s.add(AdminSession(token_hash=hash_api_key(token), user_id=user.id, kind=kind,
                               created_at=now, last_seen_at=now))
        if self._audit is not None:
            await self._audit.append_in(s, Event(
                action=f"{kind}.login", outcome="ok" if reason is None else "denied",
                actor=user.name if user else None, actor_id=user.id if user else None,
                role=user.role if user else None, detail=reason,
                target=None if user else "unknown user"))
        return token

    def _login_result(self, kind: str, user: User | None, reason: str | None,
                      token: str | None) -> tuple[str, Identity]:
        if reason is not None or user is None or token is None:
            log.warning("login refused", extra={"kind": kind, "reason": reason,
                                                "user_id": user.id if user else None})
            raise AuthFailed(reason or "refused")
        log.info("login", extra={"kind": kind, "user_id": user.id})
        return token, Identity(user.id, user.name, user.role,
                               "session" if kind == "admin" else "web_session", None,
                               user.daily_request_limit, user.daily_token_limit)

    async def verify_second_factor(self, identity: Identity, code: object) -> None:
        """An X-TOTP code on a single admin call made with an API key. Raises AuthFailed."""
        now = self._now()
        async with self._db.write() as s:
            user = await s.get(User, identity.user_id)
            if user is None or user.disabled:
                reason: str | None = "not an active admin"
            elif user.locked_until and user.locked_until > now:
                reason = "locked"
            else:
                reason = await self._check_code(s, user, code, now)
            if reason is not None and self._audit is not None:
                await self._audit.append_in(s, Event(
                    action="admin.totp", outcome="denied", actor=identity.name,
                    actor_id=identity.user_id, role=identity.role, detail=reason))
        if reason is not None:
            log.warning("second factor refused", extra={"reason": reason,
                                                        "user_id": identity.user_id})
            raise AuthFailed(reason)

    async def _check_code(self, s: AsyncSession, user: User, code: object, now: float) -> str | None:
        """None when ``code`` is a fresh TOTP; else the reason (the failure is recorded)."""
        if not user.totp_secret:
            return "no second factor enrolled"
        secret = self._open_totp(user.id, user.totp_secret)
        step = totp.matching_step(secret, code if isinstance(code, str) else "", now)
        if step is None:
            if await _record_failure(s, user, "totp", now, self._auth, self._audit):
                self.on_lockout()
            return "wrong code"
        # Accept each step once: the conditional update is atomic under concurrency.
        result = await s.execute(
            update(User).where(
                User.id == user.id,
                (User.totp_last_step.is_(None)) | (User.totp_last_step < step),
            ).values(totp_last_step=step).execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            log.warning("totp replay rejected", extra={"user_id": user.id})
            if await _record_failure(s, user, "totp", now, self._auth, self._audit):
                self.on_lockout()
            return "replayed code"
        return None

    async def web_login(self, username: object, password: object) -> tuple[str, Identity]:
        """Open a browser session with a password (chat page, auditor view): no second
        factor, so it never opens /admin/api. Same lockout and messages as admin logins."""
        now = self._now()
        name = username if isinstance(username, str) else ""
        async with self._db.write() as s:
            user = await user_by_name(s, name) if NAME_RE.fullmatch(name) else None
            ok = passwords.verify_password(user.password_hash if user else None,
                                           password if isinstance(password, str) else "")
            reason = None
            if user is None:
                reason = "unknown user"
            elif user.locked_until and user.locked_until > now:
                reason = "locked"
            elif user.disabled or user.role == "metrics":
                reason = "not an active user"
            elif not ok:
                reason = "wrong password"
                if await _record_failure(s, user, "password", now, self._auth, self._audit):
                    self.on_lockout()
            token = await self._close_login(s, "web", user, reason, now)
        return self._login_result("web", user, reason, token)

    async def logout(self, token: str) -> None:
        async with self._db.write() as s:
            await s.execute(update(AdminSession).where(
                AdminSession.token_hash == hash_api_key(token), AdminSession.ended_at.is_(None)
            ).values(ended_at=self._now()))

    async def prune(self) -> None:
        """Forget failures older than the lockout window and sessions long ended."""
        now = self._now()

        def prune(s: Session) -> None:  # a background write: through the writer
            s.execute(delete(AuthFailure).where(
                AuthFailure.at < now - self._auth.lockout_window_minutes * 60))
            s.execute(delete(AdminSession).where(AdminSession.last_seen_at < now - 86400))

        await self._db.run_write(prune)
