"""Accounts that come from the site's directory (LDAP / Active Directory) or its OpenID
provider: created on first sign-in (just in time), their role and groups refreshed at every
sign-in, and, for LDAP, rechecked every ``auth.directory_recheck_minutes``.

A directory account is never a local one: a name that belongs to a local account signs in
with the local password only (break-glass admins, service accounts), and an OpenID
provider's user is matched by issuer and subject, never by a name it asserts. A user the
recheck finds removed or disabled in the directory is disabled here (sessions end, API keys
stop working) until they sign in with the directory again; an admin's own disable is never
lifted that way. Every creation, role or group change, removal and refusal is audited, with
the refusal's class and never the password.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from deepseekd.config import AuthSettings
from deepseekd.directory.ldap import (
    DirectoryError,
    DirectoryUnavailable,
    DirectoryUser,
    LdapDirectory,
    group_name,
)
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Unavailable
from deepseekd.services.audit import AuditLog
from deepseekd.services.rights import GroupRights, join_groups, split_groups
from deepseekd.store import Tx
from deepseekd.store import accounts as repo
from deepseekd.store import settings as settings_repo
from deepseekd.store.db import Database
from deepseekd.store.schema import User

log = logging.getLogger("deepseekd.directory")

DIRECTORY_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{1,63}$")
"""Local names of directory accounts: the directory's name, lowercased."""
DOWN = (
    "directory_unavailable: the hospital directory cannot be reached; try again shortly "
    "(local accounts still sign in)"
)


@dataclass(frozen=True)
class External:
    """A person as the directory or the OpenID provider vouched for them."""

    source: str
    """'ldap' or 'oidc'."""
    name: str
    """The local account name (the directory's, lowercased)."""
    external_id: str
    """LDAP: the DN; OIDC: ``issuer|subject``."""
    groups: tuple[str, ...]


def local_name(username: str) -> str | None:
    name = username.strip().lower()
    return name if DIRECTORY_NAME_RE.fullmatch(name) else None


def from_ldap(found: DirectoryUser) -> External:
    groups = tuple(group_name(dn) for dn in found.groups)
    return External("ldap", found.username.lower(), found.dn, groups)


class DirectorySignIn:
    def __init__(
        self,
        db: Database,
        cfg: AuthSettings,
        audit: AuditLog,
        rights: GroupRights,
        clock: Callable[[], float],
        ldap: LdapDirectory | None = None,
    ) -> None:
        self._db = db
        self._cfg = cfg
        self._audit = audit
        self.rights = rights
        self._now = clock
        self.ldap = ldap
        self.on_unavailable: Callable[[], None] = lambda: None

    def handles(self, user: User | None) -> bool:
        """Whether a password sign-in of ``user`` (None: no such account yet) goes to the
        directory rather than to the local password."""
        if self.ldap is None:
            return False
        return user is None or user.source == "ldap"

    async def check_password(self, name: str, password: str) -> External | None:
        """The person, when the directory accepts the name and password; None when it
        refuses. Unavailable (503) when it cannot be asked."""
        assert self.ldap is not None
        try:
            found = await self.ldap.authenticate(name, password)
        except DirectoryUnavailable as exc:
            self.on_unavailable()
            log.warning("directory unavailable at sign-in", extra={"error": str(exc)})
            raise Unavailable(DOWN, code="directory_unavailable", retry_after=30) from None
        except DirectoryError:
            return None
        return from_ldap(found)

    # -- inside the sign-in's transaction -----------------------------------------------

    def admit(self, s: Tx, who: External, client: str | None) -> tuple[User | None, str | None]:
        """The local account of ``who``, created or brought up to date; or the reason it
        may not sign in. Runs in the sign-in's transaction, so the account, its audit
        events and the session are written together."""
        user = self._account_of(s, who)
        if isinstance(user, str):
            return None, user
        role = self.rights.role_for(who.groups)
        if role is None:
            return user, "in no group allowed to sign in"
        if user is None:
            return self._create(s, who, role, client), None
        if user.disabled and user.directory_missing_at is None:
            return user, None  # an admin disabled it: the caller refuses, nothing changes
        self._refresh(s, user, who, role, client)
        return user, None

    def _account_of(self, s: Tx, who: External) -> User | str | None:
        """The existing account (None: none yet), or why this person cannot have it."""
        if who.source == "oidc":
            user = repo.user_by_external(s, "oidc", who.external_id)
            if user is not None:
                return user
        user = repo.user_by_name(s, who.name)
        if user is None:
            return None
        if user.source != who.source or (
            who.source == "oidc" and user.external_id != who.external_id
        ):
            return "name taken by another account"
        return user

    def _create(self, s: Tx, who: External, role: str, client: str | None) -> User:
        now = self._now()
        user = repo.add_user(
            s,
            name=who.name,
            role=role,
            source=who.source,
            external_id=who.external_id,
            groups=join_groups(who.groups),
            created_at=now,
            directory_seen_at=now,
        )
        self._audit.append_in(
            s,
            Event(
                action="user.directory_create",
                actor=user.name,
                actor_id=user.id,
                role=role,
                target=f"user:{user.name}",
                client=client,
                detail=f"source={who.source} role={role} groups={_shown(who.groups)}",
            ),
        )
        log.info("directory user created", extra={"user_id": user.id, "source": who.source})
        return user

    def _refresh(
        self, s: Tx, user: User, who: External, role: str, client: str | None, by: str = "sign-in"
    ) -> None:
        groups = join_groups(who.groups)
        before = (user.role, split_groups(user.groups), user.disabled)
        user.role, user.groups, user.external_id = role, groups, who.external_id
        user.directory_seen_at = self._now()
        if user.directory_missing_at is not None:  # back in the directory
            user.disabled, user.directory_missing_at = False, None
        if before == (role, split_groups(groups), user.disabled):
            return
        self._audit.append_in(
            s,
            Event(
                action="user.directory_change",
                actor=user.name if by == "sign-in" else None,
                actor_id=user.id if by == "sign-in" else None,
                role=role,
                target=f"user:{user.name}",
                client=client,
                detail=f"at {by}: role {before[0]} -> {role}; groups {_shown(before[1])} -> "
                f"{_shown(split_groups(groups))}"
                + ("; enabled again" if before[2] and not user.disabled else ""),
            ),
        )
        if before[0] != role:  # a lost or gained role: sessions opened with the old one end
            repo.end_sessions_of(s, user.id, self._now())

    async def record_mapping(self) -> bool:
        """At start: audit a change of the ``[[auth.group]]`` mapping since the last start
        (``directory.mapping_change``, what was and what is); returns whether it changed."""
        now_text = mapping_text(self._cfg)

        def record(s: Tx) -> bool:
            before = settings_repo.load(s).get(MAPPING_KEY)
            if before == now_text or (before is None and not now_text):
                return False
            settings_repo.save(s, {MAPPING_KEY: now_text}, self._now(), "config")
            self._audit.append_in(
                s,
                Event(
                    action="directory.mapping_change",
                    detail=f"was: {before or 'none'}; now: {now_text or 'none'}",
                ),
            )
            return True

        return bool(
            await self._audit.transaction("directory.mapping", record, "directory.mapping_change")
        )

    async def retention_overrides(self) -> dict[int, int]:
        """Days of history kept per user whose groups set a retention (0 = kept)."""
        rows = await self._db.read("directory.groups", repo.users_with_groups)
        out: dict[int, int] = {}
        for user_id, stored in rows:
            days = self.rights.retention_days(split_groups(stored))
            if days is not None:
                out[user_id] = days
        return out

    # -- the recheck ---------------------------------------------------------------------

    @property
    def rechecks(self) -> bool:
        """LDAP with a service account: direct bind has no credentials to look users up."""
        return self.ldap is not None and bool(self._cfg.ldap.bind_dn)

    async def recheck(self) -> int:
        """Ask the directory about every active LDAP account; returns how many were
        disabled. Stops (changing nothing more) when the directory cannot be reached."""
        if not self.rechecks:
            return 0
        assert self.ldap is not None
        users = await self._db.read("directory.users", lambda s: repo.directory_users(s, "ldap"))
        gone = 0
        for user_id, name in users:
            try:
                found = await self.ldap.lookup(name)
            except DirectoryUnavailable as exc:
                self.on_unavailable()
                log.warning("directory recheck stopped", extra={"error": str(exc)})
                return gone
            who = from_ldap(found) if found is not None else None
            if await self._audit.transaction(
                "directory.recheck", self._recheck_one_of(user_id, who), "user.directory_remove"
            ):
                gone += 1
        return gone

    def _recheck_one_of(self, user_id: int, who: External | None) -> Callable[[Tx], bool]:
        return lambda s: self._recheck_one(s, user_id, who)

    def _recheck_one(self, s: Tx, user_id: int, who: External | None) -> bool:
        user = repo.user_by_id(s, user_id)
        if user is None or user.disabled or user.source != "ldap":
            return False
        role = self.rights.role_for(who.groups) if who is not None else None
        if who is not None and role is not None:
            self._refresh(s, user, who, role, None, by="recheck")
            return False
        now = self._now()
        user.disabled, user.directory_missing_at = True, now
        ended = repo.end_sessions_of(s, user.id, now)
        why = "removed or disabled in the directory" if who is None else "in no allowed group"
        self._audit.append_in(
            s,
            Event(
                action="user.directory_remove",
                role=user.role,
                target=f"user:{user.name}",
                detail=f"{why}; disabled here, {ended} sessions ended",
            ),
        )
        log.warning("directory user disabled", extra={"user_id": user.id, "reason": why})
        return True


MAPPING_KEY = "directory.group_mapping"
"""Where the last start's mapping is kept (runtime_settings; not a run-time setting)."""


def mapping_text(cfg: AuthSettings) -> str:
    """The group mapping in one line, as audit events show it."""
    entries = [
        f"{g.name}: role={g.role} requests={g.daily_requests} tokens={g.daily_tokens} "
        f"models={','.join(g.models) or '-'} retention={g.retention_days}"
        for g in cfg.group
    ]
    if cfg.directory_default_role != "user":
        entries.append(f"others: {cfg.directory_default_role}")
    return "; ".join(entries)


def _shown(groups: tuple[str, ...]) -> str:
    return ",".join(groups) or "-"
