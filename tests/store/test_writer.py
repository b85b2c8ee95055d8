"""Database.write: group commit on SQLite (one writer thread), one transaction per job on
PostgreSQL. What callers rely on: a job's result comes back only once committed, one job's
error is that job's only, after-commit hooks never run for a rolled-back job."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from deepseekd.store.db import Database
from deepseekd.store.schema import RuntimeSetting
from deepseekd.store.writer import after_commit


def put(key: str, value: str, hooks: list[str] | None = None):  # type: ignore[no-untyped-def]
    def job(s: Session) -> str:
        s.add(RuntimeSetting(key=key, value=value, updated_at=0.0, updated_by="test"))
        s.flush()
        if hooks is not None:
            after_commit(s, lambda: hooks.append(key))
        if value == "bad":
            raise ValueError(f"{key} refused")
        return key

    return job


async def stored(db: Database) -> dict[str, str]:
    rows = await db.read("test", lambda s: s.execute(
        select(RuntimeSetting.key, RuntimeSetting.value)).all())
    return dict(rows)


async def test_many_jobs_commit_together_and_all_land(db: Database) -> None:
    hooks: list[str] = []
    keys = await asyncio.gather(*(db.write("test", put(f"k{i}", str(i), hooks)) for i in range(50)))
    assert keys == [f"k{i}" for i in range(50)]
    assert await stored(db) == {f"k{i}": str(i) for i in range(50)}
    assert sorted(hooks) == sorted(keys)
    if db.is_sqlite:  # jobs that waited together shared a transaction
        assert db.writer is not None and db.writer.batches < db.writer.jobs


async def test_a_failing_job_fails_alone(db: Database) -> None:
    hooks: list[str] = []
    jobs = [put("a", "1", hooks), put("b", "bad", hooks), put("c", "3", hooks)]
    results = await asyncio.gather(*(db.write("test", j) for j in jobs), return_exceptions=True)
    assert results[0] == "a" and results[2] == "c"
    assert isinstance(results[1], ValueError) and str(results[1]) == "b refused"
    assert await stored(db) == {"a": "1", "c": "3"}  # nothing of b, all of a and c
    assert sorted(hooks) == ["a", "c"]  # b's hook never ran: it never committed


async def test_a_constraint_error_reaches_its_caller(db: Database) -> None:
    await db.write("test", put("dup", "1"))
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        await db.write("test", put("dup", "2"))
    assert await stored(db) == {"dup": "1"}


async def test_a_cancelled_caller_does_not_lose_the_write(db: Database) -> None:
    """A client that leaves mid-commit: the write still lands whole, the writer keeps going."""
    task = asyncio.ensure_future(db.write("test", put("left", "1")))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await db.write("test", put("next", "2")) == "next"
    count = await db.read("test", lambda s: s.execute(
        select(func.count()).select_from(RuntimeSetting)).scalar_one())
    assert count in (1, 2)  # "left" either committed whole or never started
    assert (await stored(db))["next"] == "2"


async def test_reads_in_one_hop_see_committed_writes(db: Database) -> None:
    await db.write("test", put("seen", "yes"))
    value = await db.read("test", 
        lambda s: s.execute(text("SELECT value FROM runtime_settings WHERE key = 'seen'"))
        .scalar_one())
    assert value == "yes"
