"""Users and their API keys, as admins and the CLI manage them. Every change commits with
its audit event (fail closed); names, roles and limits are checked here, so the API and the
CLI give the same errors."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from deepseekd.config import AuthSettings
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Conflict, Invalid, NotFound
from deepseekd.domain.identity import ROLES, Identity
from deepseekd.security import passwords, totp
from deepseekd.security.apikeys import KEY_PREFIX, generate_api_key, hash_api_key
from deepseekd.security.keyring import SecretBox
from deepseekd.services.audit import AuditLog
from deepseekd.services.rights import GroupRights, split_groups
from deepseekd.store import Tx
from deepseekd.store import accounts as repo
from deepseekd.store.db import Database
from deepseekd.store.schema import User

log = logging.getLogger("deepseekd.auth")

Clock = Callable[[], float]
NAME_RE = re.compile(r"^[a-z][a-z0-9._-]{1,31}$")
USER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{1,63}$")
"""Any account's name: a local one (NAME_RE) or a directory one (its name, lowercased)."""
NAME_RULE = "2-32 characters: lowercase letters, digits, '.', '_', '-', starting with a letter"
LABEL_RE = re.compile(r"^[\w .:@-]{0,64}$")
MAX_LIMIT = 10_000_000


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
    must_change_password: bool = False
    """A password reset is pending: the next sign-in must choose a new password."""
    source: str = "local"
    """Where the account comes from: 'local', 'ldap' or 'oidc'."""
    groups: tuple[str, ...] = ()
    """Its directory groups as of its last directory sign-in or recheck."""
    group_daily_request_limit: int | None = None
    """The largest daily request limit of its groups ([[auth.group]]), which applies while
    ``daily_request_limit`` is null; null: the [quota] default."""


@dataclass(frozen=True)
class KeyInfo:
    id: int
    user: str
    prefix: str
    label: str
    created_at: float
    revoked_at: float | None


# --------------------------------------------------------------------------- validation


def check_name(name: object, field: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise Invalid(f"{field}: {NAME_RULE}", field=field)
    return name


def check_role(role: object) -> str:
    if role not in ROLES:
        raise Invalid(f"role: must be one of {', '.join(ROLES)}", field="role")
    return str(role)


def check_limit(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise Invalid(
            f"{field}: must be an integer from 0 to {MAX_LIMIT}, or null for the default",
            field=field,
        )
    return value


def check_label(label: object) -> str:
    if not isinstance(label, str) or not LABEL_RE.fullmatch(label):
        raise Invalid("label: up to 64 letters, digits, spaces or . : @ _ -", field="label")
    return label


def require_user(s: Tx, name: str) -> User:
    user = repo.user_by_name(s, name)
    if user is None:
        raise NotFound(f"no user named '{name}'", field="name")
    return user


def new_key(s: Tx, user_id: int, label: str, now: float) -> tuple[int, str]:
    """A fresh API key for ``user_id``: stored as its hash, returned in clear once."""
    key = generate_api_key()
    key_id = repo.add_key(s, user_id, hash_api_key(key), key[: len(KEY_PREFIX) + 6], label, now)
    return key_id, key


# --------------------------------------------------------------------------- service


class AccountService:
    def __init__(
        self, db: Database, auth: AuthSettings, clock: Clock, audit: AuditLog, totp_box: SecretBox
    ) -> None:
        self._db = db
        self._auth = auth
        self._now = clock
        self._audit = audit
        self._totp_box = totp_box
        self.may_have_totp: Callable[[str, tuple[str, ...]], bool] = lambda _name, _groups: False
        """Besides admins: who else enrols an authenticator (break-glass holders)."""

    def seal_totp(self, user_id: int, secret: str) -> str:
        """TOTP seeds are stored sealed with the service's TOTP key (bound to the user)."""
        return self._totp_box.seal(secret, b"totp:%d" % user_id)

    def open_totp(self, user_id: int, stored: str) -> str:
        return self._totp_box.open(stored, b"totp:%d" % user_id)

    # -- users -----------------------------------------------------------------------

    async def create_user(
        self,
        name: object,
        role: object,
        *,
        daily_request_limit: object = None,
        daily_token_limit: object = None,
        by: Identity | None = None,
    ) -> NewUser:
        name = check_name(name)
        role = check_role(role)
        req_limit = check_limit(daily_request_limit, "daily_request_limit")
        tok_limit = check_limit(daily_token_limit, "daily_token_limit")
        now = self._now()
        password = None if role == "metrics" else passwords.generate_password()
        secret = totp.new_secret() if role == "admin" else None
        pw_hash = await asyncio.to_thread(passwords.hash_password, password) if password else None

        def create(s: Tx) -> str:
            if repo.user_by_name(s, name) is not None:
                raise Conflict(f"name: a user named '{name}' already exists", field="name")
            user = repo.add_user(
                s,
                name=name,
                role=role,
                password_hash=pw_hash,
                totp_secret=None,
                disabled=False,
                daily_request_limit=req_limit,
                daily_token_limit=tok_limit,
                created_at=now,
            )
            if secret is not None:
                user.totp_secret = self.seal_totp(user.id, secret)
            _, key = new_key(s, user.id, "initial", now)
            self._audit.append_in(
                s, Event.by(by, "user.create", target=f"user:{name}", detail=f"role={role}")
            )
            return key

        key = await self._audit.transaction("user.create", create, "user.create")
        uri = totp.provisioning_uri(secret, name, self._auth.totp_issuer) if secret else None
        log.info("user created", extra={"user": name, "role": role})
        return NewUser(name, role, key, password, uri)

    async def at_keyboard(self, name: str) -> Identity:
        """The person at the command line, named by ``--admin``/``name``: an active account,
        who then proves it with their own fresh second factor (break-glass, promotion)."""
        return await person_at_keyboard(self._db, name)

    async def has_users(self) -> bool:
        return await self._db.read("user.count", repo.count_users) > 0

    async def list_users(self) -> list[UserInfo]:
        now = self._now()
        rows, locked = await self._db.read(
            "user.list", lambda s: (repo.users_with_key_counts(s), repo.locked_names(s, now))
        )
        rights = GroupRights(self._auth.group)
        return [
            UserInfo(
                u.name,
                u.role,
                u.disabled,
                u.daily_request_limit,
                u.daily_token_limit,
                u.totp_secret is not None,
                u.name in locked,
                u.created_at,
                n,
                bool(u.must_change_password),
                u.source or "local",
                split_groups(u.groups),
                rights.limits(split_groups(u.groups), (None, None))[0],
            )
            for u, n in rows
        ]

    async def user_info(self, name: str) -> UserInfo:
        for user in await self.list_users():
            if user.name == name:
                return user
        raise NotFound(f"no user named '{name}'", field="name")

    async def disable_user(self, name: str, *, by: Identity | None = None) -> None:
        def disable(s: Tx) -> None:
            user = require_user(s, name)
            user.disabled = True
            self._audit.append_in(s, Event.by(by, "user.disable", target=f"user:{name}"))
            repo.end_sessions_of(s, user.id, self._now())  # open sessions end with the account

        await self._audit.transaction("user.disable", disable, "user.disable")
        log.info("user disabled", extra={"user": name})

    async def enable_user(self, name: str, *, by: Identity | None = None) -> None:
        """A disabled account works again (its revoked keys stay revoked). An erased one
        cannot come back: its history is gone and its name stays taken."""

        def enable(s: Tx) -> None:
            user = require_user(s, name)
            if user.erased_at is not None:
                raise Conflict(
                    f"name: user '{name}' was erased and cannot be enabled again", field="name"
                )
            user.disabled = False
            self._audit.append_in(s, Event.by(by, "user.enable", target=f"user:{name}"))

        await self._audit.transaction("user.enable", enable, "user.enable")
        log.info("user enabled", extra={"user": name})

    async def unlock(self, name: str, *, by: Identity | None = None) -> int:
        """Lift every sign-in lock on ``name`` (all addresses and paths); returns how many
        were in force."""
        now = self._now()

        def unlock(s: Tx) -> int:
            require_user(s, name)
            live = repo.live_locks(s, name, now)
            repo.unlock(s, name)
            self._audit.append_in(
                s, Event.by(by, "user.unlock", target=f"user:{name}", detail=f"{live} locks lifted")
            )
            return live

        return await self._audit.transaction("user.unlock", unlock, "user.unlock")

    async def reset_password(self, name: str, *, by: Identity | None = None) -> str:
        """A new one-time password, shown once: it opens only a form to choose a new one.
        The user's sessions end; locks on the name are lifted."""
        password = passwords.generate_password()
        pw_hash = await asyncio.to_thread(passwords.hash_password, password)

        def reset(s: Tx) -> None:
            user = require_user(s, name)
            if user.role == "metrics":
                raise Invalid(
                    "name: a metrics identity has no password, only API keys", field="name"
                )
            if user.erased_at is not None:
                raise Conflict(f"name: user '{name}' was erased", field="name")
            if user.source != "local":
                raise Invalid(
                    f"name: '{name}' signs in with the hospital directory ({user.source}); "
                    "reset the password there",
                    field="name",
                    code="directory_account",
                )
            user.password_hash, user.must_change_password = pw_hash, True
            ended = repo.end_sessions_of(s, user.id, self._now())
            repo.unlock(s, name)
            self._audit.append_in(
                s,
                Event.by(
                    by,
                    "user.password_reset",
                    target=f"user:{name}",
                    detail=f"{ended} sessions ended",
                ),
            )

        await self._audit.transaction("user.password_reset", reset, "user.password_reset")
        return password

    async def set_limits(
        self,
        name: str,
        *,
        daily_request_limit: object = ...,
        daily_token_limit: object = ...,
        by: Identity | None = None,
    ) -> UserInfo:
        def limits(s: Tx) -> None:
            user = require_user(s, name)
            if daily_request_limit is not ...:
                user.daily_request_limit = check_limit(daily_request_limit, "daily_request_limit")
            if daily_token_limit is not ...:
                user.daily_token_limit = check_limit(daily_token_limit, "daily_token_limit")
            self._audit.append_in(
                s,
                Event.by(
                    by,
                    "user.limits",
                    target=f"user:{name}",
                    detail=f"requests={user.daily_request_limit} tokens={user.daily_token_limit}",
                ),
            )

        await self._audit.transaction("user.limits", limits, "user.limits")
        return await self.user_info(name)

    async def reset_totp(self, name: str, *, by: Identity | None = None) -> str:
        secret = totp.new_secret()

        def reset(s: Tx) -> None:
            user = require_user(s, name)
            if user.role != "admin" and not self.may_have_totp(
                user.name, split_groups(user.groups)
            ):
                raise Invalid(
                    "name: only admins and those listed in [breakglass] allowed have a "
                    "second factor",
                    field="name",
                )
            user.totp_secret = self.seal_totp(user.id, secret)
            user.totp_last_step = None
            self._audit.append_in(s, Event.by(by, "user.totp_reset", target=f"user:{name}"))
            repo.end_sessions_of(s, user.id, self._now())

        await self._audit.transaction("user.totp_reset", reset, "user.totp_reset")
        return totp.provisioning_uri(secret, name, self._auth.totp_issuer)

    # -- keys ------------------------------------------------------------------------

    async def create_key(
        self, name: str, label: object = "", *, by: Identity | None = None
    ) -> tuple[int, str]:
        label = check_label(label)

        def create(s: Tx) -> tuple[int, str]:
            user = require_user(s, name)
            if user.disabled:
                raise Conflict(f"name: user '{name}' is disabled", field="name")
            key_id, key = new_key(s, user.id, label, self._now())
            self._audit.append_in(
                s, Event.by(by, "key.create", target=f"user:{name}", detail=f"key_id={key_id}")
            )
            return key_id, key

        return await self._audit.transaction("key.create", create, "key.create")

    async def revoke_key(self, key_id: int, *, by: Identity | None = None) -> None:
        def revoke(s: Tx) -> None:
            if not repo.revoke_key(s, key_id, self._now()):
                raise NotFound(f"no active API key with id {key_id}", field="key_id")
            ended = repo.end_sessions_by_key(s, key_id, self._now())  # sessions it opened
            self._audit.append_in(
                s,
                Event.by(
                    by,
                    "key.revoke",
                    target=f"key:{key_id}",
                    detail=f"{ended} sessions ended" if ended else None,
                ),
            )

        await self._audit.transaction("key.revoke", revoke, "key.revoke")

    async def list_keys(self, name: str | None = None) -> list[KeyInfo]:
        def keys(s: Tx) -> list[KeyInfo]:
            if name is not None:
                require_user(s, name)
            return [
                KeyInfo(k.id, n, k.prefix, k.label, k.created_at, k.revoked_at)
                for k, n in repo.keys(s, name)
            ]

        return await self._db.read("key.list", keys)


async def person_at_keyboard(db: Database, name: str) -> Identity:
    """An active account as the identity of a command-line action (``via`` "cli")."""
    user = await db.read("accounts.at_keyboard", lambda s: repo.user_by_name(s, name))
    if user is None or user.disabled or user.erased_at is not None:
        raise NotFound(f"no active user named '{name}'", field="name")
    return Identity(
        user.id, user.name, user.role, "cli", groups=split_groups(user.groups), client="cli"
    )
