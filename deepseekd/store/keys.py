"""Key rows: the check value of each master key version, per-user data keys and the
service's own keys, all stored wrapped (the wrapping happens in services/keys.py)."""

from __future__ import annotations

from sqlalchemy import delete, inspect, select, update
from sqlalchemy.orm import Session

from deepseekd.store.dialect import insert, rowcount
from deepseekd.store.schema import KeyCheck, Replica, ServiceKey, UserKey


def key_checks(s: Session) -> dict[int, KeyCheck]:
    return {c.version: c for c in s.execute(select(KeyCheck)).scalars()}


def any_user_key(s: Session) -> bool:
    return s.execute(select(UserKey.user_id).limit(1)).first() is not None


def holds_keys(s: Session) -> bool:
    """Whether the database holds anything made under a master key: a key check, a user's
    or the service's key. False for a database without deepseekd's tables yet (a new,
    empty PostgreSQL database)."""
    if not inspect(s.connection()).has_table(KeyCheck.__tablename__):
        return False
    made = (
        select(KeyCheck.version).limit(1),
        select(UserKey.user_id).limit(1),
        select(ServiceKey.name).limit(1),
    )
    return any(s.execute(q).first() is not None for q in made)


def add_key_check(
    s: Session, version: int, check_value: bytes, now: float, *, prepared: bool = False
) -> None:
    s.add(KeyCheck(version=version, check_value=check_value, created_at=now, prepared=prepared))


def activate_check(s: Session, version: int, now: float) -> bool:
    """A prepared version becomes the one in use (its age counts from now); False when it
    is not prepared any more (another replica's rotation got there first)."""
    return bool(
        rowcount(
            s.execute(
                update(KeyCheck)
                .where(KeyCheck.version == version, KeyCheck.prepared.is_(True))
                .values(prepared=False, created_at=now)
            )
        )
    )


def retire_other_checks(s: Session, current: int, now: float) -> None:
    s.execute(
        update(KeyCheck)
        .where(KeyCheck.version != current, KeyCheck.retired_at.is_(None))
        .values(retired_at=now)
    )


def check_created_at(s: Session, version: int) -> float | None:
    return s.execute(
        select(KeyCheck.created_at).where(KeyCheck.version == version)
    ).scalar_one_or_none()


def check_times(s: Session) -> list[tuple[int, float, float | None]]:
    """(version, created at, retired at or None) of every master key version on record,
    oldest first: metadata only, never a check value."""
    rows = s.execute(
        select(KeyCheck.version, KeyCheck.created_at, KeyCheck.retired_at).order_by(
            KeyCheck.version
        )
    ).all()
    return [(int(r[0]), float(r[1]), None if r[2] is None else float(r[2])) for r in rows]


def user_key(s: Session, user_id: int) -> UserKey | None:
    return s.get(UserKey, user_id)


def insert_user_key(s: Session, user_id: int, version: int, wrapped: bytes, now: float) -> bool:
    """Store a new wrapped data key; False when another transaction stored one first (two
    first turns of one user may race on PostgreSQL): read the winner's then."""
    return bool(
        rowcount(
            s.execute(
                insert(s, UserKey)
                .values(user_id=user_id, kek_version=version, wrapped=wrapped, created_at=now)
                .on_conflict_do_nothing(index_elements=[UserKey.user_id])
            )
        )
    )


def reread_user_key(s: Session, user_id: int) -> UserKey:
    return s.execute(
        select(UserKey).where(UserKey.user_id == user_id).execution_options(populate_existing=True)
    ).scalar_one()


def delete_user_key(s: Session, user_id: int) -> bool:
    return bool(rowcount(s.execute(delete(UserKey).where(UserKey.user_id == user_id))))


def service_key(s: Session, name: str) -> ServiceKey | None:
    return s.get(ServiceKey, name)


def add_service_key(s: Session, name: str, version: int, wrapped: bytes, now: float) -> None:
    s.add(ServiceKey(name=name, kek_version=version, wrapped=wrapped, created_at=now))


def user_keys_not_at(s: Session, version: int) -> list[UserKey]:
    return list(s.execute(select(UserKey).where(UserKey.kek_version != version)).scalars())


def service_keys_not_at(s: Session, version: int) -> list[ServiceKey]:
    return list(s.execute(select(ServiceKey).where(ServiceKey.kek_version != version)).scalars())


def versions_in_use(s: Session) -> set[int]:
    """Master key versions some wrapped key still needs."""
    return {int(v) for v in s.execute(select(UserKey.kek_version).distinct()).scalars()} | {
        int(v) for v in s.execute(select(ServiceKey.kek_version).distinct()).scalars()
    }


# -- replicas sharing the database ------------------------------------------------------


def report_replica(
    s: Session,
    host: str,
    keys_dir: str,
    *,
    pid: int,
    started_at: float,
    now: float,
    versions: list[int],
    wraps_with: int,
) -> None:
    values = {
        "pid": pid,
        "started_at": started_at,
        "seen_at": now,
        "key_versions": ",".join(map(str, sorted(versions))),
        "wraps_with": wraps_with,
    }
    stmt = insert(s, Replica).values(host=host, keys_dir=keys_dir, **values)
    s.execute(
        stmt.on_conflict_do_update(index_elements=[Replica.host, Replica.keys_dir], set_=values)
    )


def replicas(s: Session) -> list[Replica]:
    return list(s.execute(select(Replica).order_by(Replica.host, Replica.keys_dir)).scalars())


def forget_replica(s: Session, host: str, keys_dir: str, pid: int) -> None:
    """A replica that stops cleanly leaves (only its own row: a newer process on the same
    host and folder may have reported since)."""
    s.execute(
        delete(Replica).where(
            Replica.host == host, Replica.keys_dir == keys_dir, Replica.pid == pid
        )
    )


def prune_replicas(s: Session, seen_before: float) -> int:
    return rowcount(s.execute(delete(Replica).where(Replica.seen_at < seen_before)))
