"""Fine-tuning datasets: one row per version, the examples sealed by the service."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, defer

from deepseekd.store.schema import FinetuneDataset, FinetuneJob, FinetuneRelease, ServiceKey


def latest_version(s: Session, name: str) -> int:
    found = s.execute(
        select(func.max(FinetuneDataset.version)).where(FinetuneDataset.name == name)
    ).scalar_one_or_none()
    return int(found or 0)


def add_dataset(
    s: Session, name: str, version: int, now: float, by: str | None, examples: int, stats: str
) -> FinetuneDataset:
    """A new version with an empty seal (its key needs the id): fill ``sealed`` in the
    same transaction."""
    row = FinetuneDataset(
        name=name,
        version=version,
        created_at=now,
        created_by=by,
        examples=examples,
        stats=stats,
        sealed=b"",
    )
    s.add(row)
    s.flush()
    return row


def datasets(s: Session, name: str | None = None) -> list[FinetuneDataset]:
    """Every version (of ``name``), newest first, without loading the sealed examples."""
    q = select(FinetuneDataset).order_by(FinetuneDataset.name, FinetuneDataset.version.desc())
    if name is not None:
        q = q.where(FinetuneDataset.name == name)
    return list(s.execute(q.options(defer(FinetuneDataset.sealed))).scalars())


def dataset(s: Session, name: str, version: int | None) -> FinetuneDataset | None:
    """A version of ``name``; None for the newest."""
    q = select(FinetuneDataset).where(FinetuneDataset.name == name)
    q = (
        q.where(FinetuneDataset.version == version)
        if version is not None
        else q.order_by(FinetuneDataset.version.desc()).limit(1)
    )
    return s.execute(q).scalars().first()


def delete_dataset(s: Session, row: FinetuneDataset, key_name: str) -> None:
    """The row and its data key, in one transaction: the sealed copy any backup or WAL page
    still holds can no longer be opened."""
    s.execute(delete(ServiceKey).where(ServiceKey.name == key_name))
    s.delete(row)
    s.flush()


def add_job(s: Session, **fields: Any) -> FinetuneJob:
    row = FinetuneJob(**fields)
    s.add(row)
    s.flush()
    return row


def job(s: Session, job_id: int) -> FinetuneJob | None:
    return s.get(FinetuneJob, job_id, populate_existing=True)


def jobs(s: Session, limit: int = 50) -> list[FinetuneJob]:
    """The newest jobs first, without their sealed reports."""
    q = select(FinetuneJob).options(defer(FinetuneJob.report))
    return list(s.execute(q.order_by(FinetuneJob.id.desc()).limit(limit)).scalars())


def running_jobs(s: Session) -> list[FinetuneJob]:
    q = select(FinetuneJob).where(FinetuneJob.status == "running")
    return list(s.execute(q.options(defer(FinetuneJob.report))).scalars())


def add_release(s: Session, **fields: Any) -> FinetuneRelease:
    row = FinetuneRelease(**fields)
    s.add(row)
    s.flush()
    return row


def releases(s: Session, name: str | None = None) -> list[FinetuneRelease]:
    """Every kept version (of ``name``), by name then newest first."""
    q = select(FinetuneRelease)
    if name is not None:
        q = q.where(FinetuneRelease.name == name)
    order = (FinetuneRelease.name, FinetuneRelease.version.desc())
    return list(s.execute(q.order_by(*order)).scalars())


def next_release_version(s: Session, name: str) -> int:
    found = s.execute(
        select(func.max(FinetuneRelease.version)).where(FinetuneRelease.name == name)
    ).scalar_one_or_none()
    return int(found or 0) + 1


def drop_release(s: Session, row: FinetuneRelease) -> None:
    s.delete(row)
    s.flush()
