"""Fine-tuning jobs on record (services/finetune/jobs.py) when the worker fails: the real
worker process, a base model it cannot load; the job is failed with its reason, audited,
resumable, cancellable; settings are checked before anything starts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from deepseekd.config import Settings
from deepseekd.domain.errors import Conflict, Invalid, NotFound
from deepseekd.services.finetune.datasets import DatasetService
from deepseekd.services.finetune.jobs import JobService
from deepseekd.store.db import Database
from tests.services.test_finetune_datasets import upload
from tests.services.test_history import SQLITE_ONLY, Stack, make_stack, sql


@pytest.fixture
async def stack(db: Database, tmp_path: Path, clock: Any) -> Stack:
    return await make_stack(db, tmp_path / "keys", clock)


def services(stack: Stack, tmp_path: Path) -> tuple[DatasetService, JobService]:
    settings = dataclasses.replace(Settings(), data_dir=tmp_path / "data")
    ds = DatasetService(settings, stack.db, stack.keys, stack.audit, stack.clock)
    return ds, JobService(settings, stack.db, stack.keys, stack.audit, ds, stack.clock)


def not_a_model(tmp_path: Path) -> Path:
    """A folder the worker takes for a base model and cannot load: the job fails at once."""
    bogus = tmp_path / "not-a-model"
    bogus.mkdir()
    (bogus / "config.json").write_text("{}")
    return bogus


@SQLITE_ONLY
async def test_a_failed_worker_is_recorded_and_can_be_resumed_or_cancelled(
    stack: Stack, tmp_path: Path
) -> None:
    ds, jobs = services(stack, tmp_path)
    await ds.import_(stack.alice, "triage", upload())
    bogus = not_a_model(tmp_path)
    failed = await jobs.start(stack.alice, "triage", base=str(bogus))
    assert failed["status"] == "failed" and failed["error"]
    assert "PELICAN" not in failed["error"]
    assert failed["params"]["rank"] == 8 and failed["dataset"] == "triage"
    events = await sql(stack.db, "SELECT action, outcome, target FROM audit_events WHERE "
                       "action LIKE 'finetune.job.%' ORDER BY id")
    target = f"finetune-job:{failed['id']}"
    assert [tuple(e) for e in events] == [("finetune.job.start", "ok", target),
                                         ("finetune.job.fail", "error", target)]
    again = await jobs.resume(stack.alice)  # the newest failed job
    assert again["id"] == failed["id"] and again["status"] == "failed"
    cancelled = await jobs.cancel(stack.alice, failed["id"])
    assert cancelled["status"] == "cancelled"
    with pytest.raises(Conflict, match="only an interrupted or failed job resumes"):
        await jobs.resume(stack.alice, failed["id"])
    with pytest.raises(Conflict, match="is cancelled"):
        await jobs.cancel(stack.alice, failed["id"])
    with pytest.raises(NotFound, match="no interrupted or failed job"):
        await jobs.resume(stack.alice)
    (listed,) = await jobs.listing()
    assert listed["status"] == "cancelled"
    (detail,) = await sql(stack.db, "SELECT detail FROM audit_events WHERE action = "
                          "'finetune.job.start'")
    assert json.loads(detail[0])["dataset"] == "triage:v1"


@SQLITE_ONLY
async def test_settings_and_names_are_checked_before_anything_starts(
    stack: Stack, tmp_path: Path
) -> None:
    ds, jobs = services(stack, tmp_path)
    with pytest.raises(Invalid, match="rank: a positive number"):
        await jobs.start(stack.alice, "triage", overrides={"rank": 0})
    with pytest.raises(Invalid, match="warmup: not a fine-tuning setting"):
        await jobs.start(stack.alice, "triage", overrides={"warmup": 3})
    bogus = not_a_model(tmp_path)
    with pytest.raises(NotFound, match="no dataset named 'triage'"):
        await jobs.start(stack.alice, "triage", base=str(bogus))
    with pytest.raises(NotFound, match="no fine-tuning job 9"):
        await jobs.get(9)
    assert await sql(stack.db, "SELECT id FROM finetune_jobs") == []


@SQLITE_ONLY
async def test_the_timers_job_trains_the_newest_dataset_and_its_failure_shows(
    stack: Stack, tmp_path: Path
) -> None:
    ds, jobs = services(stack, tmp_path)
    with pytest.raises(NotFound, match="none is imported yet"):
        await jobs.scheduled_dataset()
    assert (await jobs.gauges())["timer_failed"] == 0.0
    await ds.import_(stack.alice, "triage", upload())
    stack.clock.advance(60)
    await ds.import_(stack.alice, "pharmacy", upload())
    assert await jobs.scheduled_dataset() == "pharmacy"  # the one imported last
    named = JobService(dataclasses.replace(jobs._settings, finetune=dataclasses.replace(
        jobs._settings.finetune, schedule_dataset="triage")), stack.db, stack.keys, stack.audit,
        ds, stack.clock)
    assert await named.scheduled_dataset() == "triage"

    bogus = not_a_model(tmp_path)
    failed = await jobs.start(None, "pharmacy", base=str(bogus), scheduled=True)
    assert failed["status"] == "failed" and failed["started_by"] == "timer"
    gauges = await jobs.gauges()
    assert gauges["timer_failed"] == 1.0 and gauges["running"] == 0.0
    [detail] = await sql(stack.db, "SELECT detail FROM audit_events WHERE "
                         "action = 'finetune.job.start'")
    assert json.loads(detail[0])["scheduled"] is True
    # A job started by hand afterwards does not clear the timer's failure.
    await jobs.start(stack.alice, "triage", base=str(bogus))
    assert (await jobs.gauges())["timer_failed"] == 1.0


@SQLITE_ONLY
async def test_resuming_a_job_whose_dataset_was_deleted_leaves_it_as_it_was(
    stack: Stack, tmp_path: Path
) -> None:
    ds, jobs = services(stack, tmp_path)
    await ds.import_(stack.alice, "triage", upload())
    bogus = not_a_model(tmp_path)
    failed = await jobs.start(stack.alice, "triage", base=str(bogus))
    await ds.delete(stack.alice, "triage")
    with pytest.raises(NotFound, match="triage"):
        await jobs.resume(stack.alice, failed["id"])
    after = await jobs.get(failed["id"])
    assert after["status"] == "failed" and after["error"] == failed["error"]
    [(n,)] = await sql(stack.db, "SELECT count(*) FROM audit_events WHERE "
                       "action = 'finetune.job.resume'")
    assert n == 0
