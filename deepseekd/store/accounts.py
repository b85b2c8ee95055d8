"""Users, API keys, sessions and failed attempts. Credentials are stored only as hashes
(made in security/); these functions never see a secret in clear."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from deepseekd.store.dialect import rowcount
from deepseekd.store.schema import (
    AdminSession,
    ApiKey,
    LoginAttempt,
    LoginLock,
    QuotaUsage,
    User,
)

_KEY_LOOKUP = (
    select(
        User.id,
        User.name,
        User.role,
        User.daily_request_limit,
        User.daily_token_limit,
        User.groups,
        ApiKey.id.label("key_id"),
    )
    .join(ApiKey, ApiKey.user_id == User.id)
    .where(
        ApiKey.key_hash == bindparam("digest"),
        ApiKey.revoked_at.is_(None),
        User.disabled.is_(False),
    )
)
"""Read on every request: built once (building a statement costs more than running it)."""


# -- users ---------------------------------------------------------------------------


def user_by_name(s: Session, name: str) -> User | None:
    return s.execute(select(User).where(User.name == name)).scalar_one_or_none()


def user_by_external(s: Session, source: str, external_id: str) -> User | None:
    return s.execute(
        select(User).where(User.source == source, User.external_id == external_id)
    ).scalar_one_or_none()


def directory_users(s: Session, source: str) -> list[tuple[int, str]]:
    """(id, name) of the enabled accounts from ``source``, oldest first."""
    rows = s.execute(
        select(User.id, User.name)
        .where(User.source == source, User.disabled.is_(False), User.erased_at.is_(None))
        .order_by(User.id)
    ).all()
    return [(int(r.id), str(r.name)) for r in rows]


def users_with_groups(s: Session) -> list[tuple[int, str]]:
    """(id, groups as stored) of every account with directory groups."""
    rows = s.execute(select(User.id, User.groups).where(User.groups.is_not(None))).all()
    return [(int(r.id), str(r.groups)) for r in rows]


def user_by_id(s: Session, user_id: int) -> User | None:
    return s.get(User, user_id)


def erased_for_update(s: Session, user_id: int) -> bool | None:
    """Whether the user was erased (None: no such user), the row locked for this
    transaction: an erasure and a turn being stored wait for each other (PostgreSQL; SQLite
    has one writer anyway). Only the one column: loading the whole row as an object was 14%
    of a sealed turn's cost."""
    row = s.execute(select(User.erased_at).where(User.id == user_id).with_for_update()).first()
    return None if row is None else row.erased_at is not None


def count_users(s: Session) -> int:
    return int(s.execute(select(func.count()).select_from(User)).scalar_one())


def add_user(s: Session, **fields: Any) -> User:
    user = User(**fields)
    s.add(user)
    s.flush()
    return user


def users_with_key_counts(s: Session) -> list[tuple[User, int]]:
    active = (
        select(ApiKey.user_id, func.count().label("n"))
        .where(ApiKey.revoked_at.is_(None))
        .group_by(ApiKey.user_id)
        .subquery()
    )
    rows = s.execute(
        select(User, func.coalesce(active.c.n, 0))
        .outerjoin(active, active.c.user_id == User.id)
        .order_by(User.name)
    ).all()
    return [(u, int(n)) for u, n in rows]


# -- API keys ------------------------------------------------------------------------


def add_key(s: Session, user_id: int, key_hash: str, prefix: str, label: str, now: float) -> int:
    row = ApiKey(user_id=user_id, key_hash=key_hash, prefix=prefix, label=label, created_at=now)
    s.add(row)
    s.flush()
    return int(row.id)


def key_identity(s: Session, digest: str) -> Any:
    """The active user behind an active key: id, name, role, limits and key_id."""
    return s.connection().execute(_KEY_LOOKUP, {"digest": digest}).first()


def key_id_of(s: Session, digest: str) -> int | None:
    return s.execute(select(ApiKey.id).where(ApiKey.key_hash == digest)).scalar_one_or_none()


def key_of_user(s: Session, digest: str, user_id: int) -> bool:
    return (
        s.execute(
            select(ApiKey.id).where(
                ApiKey.key_hash == digest, ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None)
            )
        ).first()
        is not None
    )


def revoke_key(s: Session, key_id: int, now: float) -> bool:
    return bool(
        rowcount(
            s.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        )
    )


def revoke_keys_of(s: Session, user_id: int, now: float) -> int:
    return int(
        rowcount(
            s.execute(
                update(ApiKey)
                .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        )
    )


def keys(s: Session, user_name: str | None = None) -> list[tuple[ApiKey, str]]:
    q = select(ApiKey, User.name).join(User, User.id == ApiKey.user_id).order_by(ApiKey.id)
    if user_name is not None:
        q = q.where(User.name == user_name)
    return [(k, n) for k, n in s.execute(q).all()]


def keys_of(s: Session, user_id: int) -> list[ApiKey]:
    return list(s.execute(select(ApiKey).where(ApiKey.user_id == user_id)).scalars())


# -- sessions ------------------------------------------------------------------------


def session_with_user(s: Session, token_hash: str, kind: str) -> tuple[AdminSession, User] | None:
    row = s.execute(
        select(AdminSession, User)
        .join(User, User.id == AdminSession.user_id)
        .where(AdminSession.token_hash == token_hash, AdminSession.kind == kind)
    ).first()
    return (row[0], row[1]) if row is not None else None


def add_session(
    s: Session, token_hash: str, user_id: int, kind: str, now: float, key_id: int | None = None
) -> None:
    s.add(
        AdminSession(
            token_hash=token_hash,
            user_id=user_id,
            kind=kind,
            created_at=now,
            last_seen_at=now,
            key_id=key_id,
        )
    )


def erased_since(s: Session, since: float) -> list[tuple[int, float]]:
    """(user id, erased at) of the users erased at or after ``since``."""
    rows = s.execute(select(User.id, User.erased_at).where(User.erased_at >= since)).all()
    return [(int(r[0]), float(r[1] or 0.0)) for r in rows]


def set_provider_hint(s: Session, token_hash: str, hint: str) -> None:
    s.execute(
        update(AdminSession).where(AdminSession.token_hash == token_hash).values(provider_hint=hint)
    )


def provider_hint(s: Session, token_hash: str) -> str | None:
    return s.execute(
        select(AdminSession.provider_hint).where(AdminSession.token_hash == token_hash)
    ).scalar_one_or_none()


def key_active(s: Session, key_id: int) -> bool:
    return (
        s.execute(select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))).first()
        is not None
    )


def end_session(s: Session, token_hash: str, now: float) -> bool:
    return bool(
        rowcount(
            s.execute(
                update(AdminSession)
                .where(AdminSession.token_hash == token_hash, AdminSession.ended_at.is_(None))
                .values(ended_at=now)
            )
        )
    )


def end_sessions_of(s: Session, user_id: int, now: float, *, keep: str | None = None) -> int:
    """End every open session of the user (but the one whose token hash is ``keep``)."""
    q = update(AdminSession).where(AdminSession.user_id == user_id, AdminSession.ended_at.is_(None))
    if keep is not None:
        q = q.where(AdminSession.token_hash != keep)
    return rowcount(s.execute(q.values(ended_at=now)))


def end_sessions_by_key(s: Session, key_id: int, now: float) -> int:
    """End the sessions an API key opened (the key was revoked)."""
    return rowcount(
        s.execute(
            update(AdminSession)
            .where(AdminSession.key_id == key_id, AdminSession.ended_at.is_(None))
            .values(ended_at=now)
        )
    )


# -- sign-in attempts and locks --------------------------------------------------------


def add_attempt(s: Session, name: str, source: str, path: str, now: float) -> None:
    """Record a refused sign-in."""
    s.add(LoginAttempt(name=name, source=source, path=path, at=now))
    s.flush()


def attempts_since(s: Session, name: str, source: str, path: str, since: float) -> int:
    return int(
        s.execute(
            select(func.count())
            .select_from(LoginAttempt)
            .where(
                LoginAttempt.name == name,
                LoginAttempt.source == source,
                LoginAttempt.path == path,
                LoginAttempt.at > since,
            )
        ).scalar_one()
    )


def lock_until(s: Session, name: str, source: str, path: str) -> float | None:
    return s.execute(
        select(LoginLock.until).where(
            LoginLock.name == name, LoginLock.source == source, LoginLock.path == path
        )
    ).scalar_one_or_none()


def set_lock(s: Session, name: str, source: str, path: str, until: float) -> None:
    row = s.get(LoginLock, (name, source, path))
    if row is None:
        s.add(LoginLock(name=name, source=source, path=path, until=until))
    else:
        row.until = until


def live_locks(s: Session, name: str, now: float) -> int:
    return int(
        s.execute(
            select(func.count())
            .select_from(LoginLock)
            .where(LoginLock.name == name, LoginLock.until > now)
        ).scalar_one()
    )


def locked_names(s: Session, now: float) -> set[str]:
    return set(s.execute(select(LoginLock.name).where(LoginLock.until > now)).scalars())


def unlock(s: Session, name: str) -> int:
    """Lift every lock on ``name`` and forget its refused attempts; returns the locks lifted
    that were still in force."""
    s.execute(delete(LoginAttempt).where(LoginAttempt.name == name))
    return rowcount(s.execute(delete(LoginLock).where(LoginLock.name == name)))


def claim_totp_step(s: Session, user_id: int, step: int) -> bool:
    """Mark TOTP step ``step`` used; False when it (or a later one) already was. Atomic
    under concurrency: a conditional update."""
    return (
        rowcount(
            s.execute(
                update(User)
                .where(
                    User.id == user_id,
                    (User.totp_last_step.is_(None)) | (User.totp_last_step < step),
                )
                .values(totp_last_step=step)
                .execution_options(synchronize_session=False)
            )
        )
        == 1
    )


def prune(s: Session, attempts_before: float, sessions_before: float, now: float) -> None:
    s.execute(delete(LoginAttempt).where(LoginAttempt.at < attempts_before))
    s.execute(delete(LoginLock).where(LoginLock.until < now))
    s.execute(delete(AdminSession).where(AdminSession.last_seen_at < sessions_before))


def usage_of(s: Session, user_id: int) -> list[QuotaUsage]:
    return list(
        s.execute(
            select(QuotaUsage).where(QuotaUsage.user_id == user_id).order_by(QuotaUsage.day)
        ).scalars()
    )
