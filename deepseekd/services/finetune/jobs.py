"""Fine-tuning jobs: one at a time, run by a supervisor (the process that started or resumed
the job) around the worker process (engine/training.py).

The supervisor opens the dataset, hands it to the worker on a pipe (never to disk in
clear), reads the worker's events and keeps the job's record up to date: progress, loss,
the eval loss before and after, the regression answers (sealed under the dataset's key) and
the outcome. Audited: ``finetune.job.start``, ``.resume``, ``.finish``, ``.fail``,
``.cancel``.

A job whose worker died (kill -9, a crash, a reboot) stays ``running`` on record with a
dead pid, or ``failed``: ``resume`` starts a new worker from its last checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deepseekd.config import Settings
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Conflict, DomainError, Invalid, NotFound
from deepseekd.domain.identity import Identity
from deepseekd.engine import files
from deepseekd.engine.models import resolve_model
from deepseekd.engine.training import TrainSpec
from deepseekd.security.keyring import open_sealed, seal
from deepseekd.services.audit import AuditLog
from deepseekd.services.finetune.data import Dataset
from deepseekd.services.finetune.datasets import DatasetService, key_name
from deepseekd.services.keys import KeyService
from deepseekd.store import Tx
from deepseekd.store import finetune as repo
from deepseekd.store.db import Database
from deepseekd.store.schema import FinetuneJob

log = logging.getLogger("deepseekd.finetune")

OnEvent = Callable[[dict[str, Any]], None]
TIMER = "timer"
"""``started_by`` of a job deepseekd-finetune.timer started."""
PROGRESS_EVERY_S = 2.0
"""The job's record is updated at most this often (and at every checkpoint)."""


def as_json(row: FinetuneJob, alive: bool | None = None) -> dict[str, Any]:
    status = row.status
    if status == "running" and alive is False:
        status = "interrupted"
    return {
        "object": "finetune.job",
        "id": row.id,
        "dataset": row.dataset_name,
        "dataset_version": row.dataset_version,
        "base_model": row.base_model,
        "params": json.loads(row.params),
        "status": status,
        "step": row.step,
        "total_steps": row.total_steps,
        "loss": row.loss,
        "eval_loss_before": row.eval_before,
        "eval_loss_after": row.eval_after,
        "started_at": row.started_at,
        "updated_at": row.updated_at,
        "finished_at": row.finished_at,
        "started_by": row.started_by,
        "error": row.error,
        "adapter_sha256": row.adapter_sha256,
    }


class JobService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        keys: KeyService,
        audit: AuditLog,
        datasets: DatasetService,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._cfg = settings.finetune
        self._db = db
        self._keys = keys
        self._audit = audit
        self._datasets = datasets
        self._now = clock
        self.host = socket.gethostname()
        self.jobs_dir = settings.data_dir / "finetune" / "jobs"

    # -- reading ------------------------------------------------------------------------

    def alive(self, row: FinetuneJob) -> bool:
        """Whether a ``running`` job's worker still runs (another host's: if it reported
        within the last ten minutes)."""
        if row.host != self.host:
            return self._now() - row.updated_at < 600
        if row.pid is None:
            return self._now() - row.updated_at < 60
        return _pid_alive(row.pid)

    async def listing(self) -> list[dict[str, Any]]:
        rows = await self._db.read("finetune.jobs", repo.jobs)
        return [as_json(r, self.alive(r) if r.status == "running" else None) for r in rows]

    async def get(self, job_id: int) -> dict[str, Any]:
        """A job with its report: the eval losses and the regression answers, opened."""

        def read(s: Tx) -> tuple[dict[str, Any], dict[str, Any]]:
            row = self._row(s, job_id)
            return as_json(row, self.alive(row)), self._open_report(s, row)

        info, report = await self._db.read("finetune.job", read)
        return {**info, "report": report}

    async def scheduled_dataset(self) -> str:
        """What the timer trains on: ``[finetune] schedule_dataset``, else the dataset
        imported last (its newest version either way)."""
        if self._cfg.schedule_dataset:
            return self._cfg.schedule_dataset
        listed = await self._datasets.listing()
        if not listed:
            raise NotFound("dataset: none is imported yet; nothing to train", field="dataset")
        newest = max(listed, key=lambda d: (d["created_at"], d["version"]))
        return str(newest["name"])

    async def gauges(self) -> dict[str, float]:
        """For the metrics: the newest job's state, progress, loss and time left, and
        whether the newest scheduled one failed (or died)."""
        rows = await self._db.read("finetune.jobs", lambda s: repo.jobs(s, 200))
        out = {
            "running": 0.0,
            "progress": 0.0,
            "loss": 0.0,
            "eta_seconds": 0.0,
            "timer_failed": 0.0,
        }
        if rows:
            newest = as_json(rows[0], self.alive(rows[0]) if rows[0].status == "running" else None)
            done, total = newest["step"], newest["total_steps"]
            out["progress"] = 1.0 if newest["status"] == "succeeded" else done / max(total, 1)
            out["loss"] = newest["loss"] or 0.0
            if newest["status"] == "running":
                out["running"] = 1.0
                spent = self._now() - newest["started_at"]
                out["eta_seconds"] = spent / done * (total - done) if done else 0.0
        timer = next((r for r in rows if r.started_by == TIMER), None)
        if timer is not None:
            status = as_json(timer, self.alive(timer) if timer.status == "running" else None)
            out["timer_failed"] = float(status["status"] in ("failed", "interrupted"))
        return out

    # -- starting -----------------------------------------------------------------------

    def params(self, overrides: dict[str, Any]) -> dict[str, Any]:
        cfg = self._cfg
        out = {
            "rank": cfg.rank,
            "alpha": cfg.alpha,
            "epochs": cfg.epochs,
            "lr": cfg.learning_rate,
            "max_steps": 0,
            "batch_size": cfg.batch_size,
        }
        for k, v in overrides.items():
            if v is None:
                continue
            if k not in out:
                raise Invalid(f"{k}: not a fine-tuning setting", field=k)
            if not isinstance(v, (int, float)) or v < 0 or (k != "max_steps" and v == 0):
                raise Invalid(f"{k}: a positive number", field=k)
            out[k] = v
        return out

    async def start(
        self,
        who: Identity | None,
        dataset: str,
        version: int | None = None,
        base: str | None = None,
        overrides: dict[str, Any] | None = None,
        on_event: OnEvent | None = None,
        *,
        scheduled: bool = False,
    ) -> dict[str, Any]:
        """Train an adapter on a dataset version (the newest by default) and wait for it;
        ``scheduled``: started by deepseekd-finetune.timer (recorded as started by "timer")."""
        params = self.params(overrides or {})
        base_name = base or self._settings.engine.model
        base_dir = resolve_model(base_name, self._settings.models_dir)[0]
        info, ds = await self._datasets.load(dataset, version)
        job_id = await self._record_start(who, info, base_name, params, scheduled)
        return await self.supervise(job_id, ds, base_dir, params, True, on_event)

    async def _record_start(
        self,
        who: Identity | None,
        info: dict[str, Any],
        base: str,
        params: dict[str, Any],
        scheduled: bool,
    ) -> int:
        now = self._now()

        def write(s: Tx) -> int:
            self._refuse_if_busy(s)
            ds = repo.dataset(s, info["name"], info["version"])
            if ds is None:
                raise NotFound(f"dataset: {info['name']!r} was deleted meanwhile", field="dataset")
            event = Event.by(who, "finetune.job.start")
            row = repo.add_job(
                s,
                dataset_id=ds.id,
                dataset_name=ds.name,
                dataset_version=ds.version,
                base_model=base,
                params=json.dumps(params, sort_keys=True),
                status="running",
                step=0,
                total_steps=0,
                started_at=now,
                updated_at=now,
                started_by=TIMER if scheduled else event.actor,
                host=self.host,
            )
            event.target = f"finetune-job:{row.id}"
            event.extra = {
                "dataset": f"{ds.name}:v{ds.version}",
                "base_model": base,
                "scheduled": scheduled,
                **params,
            }
            self._audit.append_in(s, event)
            return row.id

        job_id: int = await self._audit.transaction("finetune.job.start", write, "finetune.job")
        return job_id

    def _refuse_if_busy(self, s: Tx) -> None:
        for other in repo.running_jobs(s):
            if self.alive(other):
                raise Conflict(
                    f"fine-tuning job {other.id} is running (one job at a time): wait for it "
                    f"or cancel it (deepseekd finetune cancel {other.id})",
                    code="finetune_busy",
                )

    async def resume(
        self, who: Identity | None, job_id: int | None = None, on_event: OnEvent | None = None
    ) -> dict[str, Any]:
        """Start a new worker for an interrupted or failed job, from its last checkpoint.
        Its dataset and base model are opened first: one deleted meanwhile leaves the job as
        it was, not marked running."""
        found = await self._db.read("finetune.job", lambda s: self._resumable(s, job_id))
        base_dir = resolve_model(found.base_model, self._settings.models_dir)[0]
        _, ds = await self._datasets.load(found.dataset_name, found.dataset_version)

        def write(s: Tx) -> tuple[FinetuneJob, bool]:
            row = self._resumable(s, found.id)  # again: another resume may have won the race
            self._refuse_if_busy(s)
            row.status, row.pid, row.error = "running", None, None
            row.updated_at, row.finished_at, row.host = self._now(), None, self.host
            event = Event.by(who, "finetune.job.resume", target=f"finetune-job:{row.id}")
            event.extra = {"step": row.step}
            self._audit.append_in(s, event)
            return row, row.eval_before is None

        row, before = await self._audit.transaction("finetune.job.resume", write, "finetune.job")
        params = json.loads(row.params)
        return await self.supervise(row.id, ds, base_dir, params, before, on_event)

    def _resumable(self, s: Tx, job_id: int | None) -> FinetuneJob:
        if job_id is not None:
            row = self._row(s, job_id)
        else:
            candidates = [r for r in repo.jobs(s, 5) if r.status in ("running", "failed")]
            if not candidates:
                raise NotFound("no interrupted or failed job to resume", field="job")
            row = candidates[0]
        if row.status == "running" and self.alive(row):
            raise Conflict(f"job {row.id} is still running", code="finetune_busy")
        if row.status not in ("running", "failed"):
            raise Conflict(
                f"job {row.id} is {row.status}; only an interrupted or failed job resumes",
                code="finetune_not_resumable",
            )
        return row

    # -- supervising --------------------------------------------------------------------

    def spec(self, job_id: int, base_dir: Path, params: dict[str, Any], before: bool) -> TrainSpec:
        job_dir = self.jobs_dir / str(job_id)
        job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        threads = self._cfg.threads or max(1, (os.cpu_count() or 2) // 2)
        return TrainSpec(
            base_dir=str(base_dir),
            job_dir=str(job_dir),
            rank=params["rank"],
            alpha=params["alpha"],
            epochs=params["epochs"],
            lr=params["lr"],
            max_steps=params["max_steps"],
            batch_size=params["batch_size"],
            max_tokens=self._cfg.max_example_tokens,
            threads=threads,
            nice=self._cfg.nice,
            seed=self._cfg.split_seed,
            device=self._cfg.device,
            checkpoint_every=self._cfg.checkpoint_every,
            answer_tokens=self._cfg.answer_tokens,
            before=before,
        )

    async def supervise(
        self,
        job_id: int,
        ds: Dataset,
        base_dir: Path,
        params: dict[str, Any],
        before: bool,
        on_event: OnEvent | None = None,
    ) -> dict[str, Any]:
        """Run the worker to its end and record the outcome; the job as it ended."""
        spec = self.spec(job_id, base_dir, params, before)
        feed = json.dumps({"spec": asdict(spec), **ds.payload()}).encode()
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(spec.threads),
            "TOKENIZERS_PARALLELISM": "false",
        }
        with open(Path(spec.job_dir) / "worker.log", "ab") as errlog:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "deepseekd.engine.training",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=errlog,
                env=env,
                limit=2**24,
            )
        await self._update(job_id, pid=proc.pid)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(feed)
        await proc.stdin.drain()
        proc.stdin.close()
        del feed
        state = _State(job_id)
        try:
            async for line in proc.stdout:
                event = _event(line)
                if event is None:
                    continue
                await self._on_event(state, event)
                if on_event is not None:
                    on_event(event)
        except DomainError as exc:  # the dataset deleted meanwhile: the job fails
            state.error = exc.message
            proc.kill()
        except BaseException:  # the supervisor stops (Ctrl-C): the job is left to resume
            proc.kill()
            await proc.wait()
            raise
        code = await proc.wait()
        return await self._finish(state, code, Path(spec.job_dir))

    async def _on_event(self, st: _State, ev: dict[str, Any]) -> None:
        kind = ev["event"]
        if kind == "start":
            st.resumed_from = ev["resumed_from"]
            await self._update(st.job_id, total_steps=ev["total"], step=ev["resumed_from"])
        elif kind == "eval":
            field = "eval_before" if ev["phase"] == "before" else "eval_after"
            await self._update(st.job_id, **{field: ev["loss"]})
        elif kind == "answers":
            await self._store_answers(st.job_id, ev["phase"], ev.get("prompts"), ev["answers"])
        elif kind == "step":
            st.step, st.loss = ev["step"], ev["loss"]
            if self._now() - st.saved_at >= PROGRESS_EVERY_S:
                await self._progress(st)
        elif kind == "checkpoint":
            await self._progress(st)
        elif kind == "done":
            st.adapter = Path(ev["adapter"])
        elif kind == "error":
            st.error = ev["message"]

    async def _progress(self, st: _State) -> None:
        st.saved_at = self._now()
        await self._update(st.job_id, step=st.step, loss=st.loss)

    async def _update(self, job_id: int, **fields: Any) -> None:
        now = self._now()

        def write(s: Tx) -> None:
            row = self._row(s, job_id)
            for k, v in fields.items():
                setattr(row, k, v)
            row.updated_at = now

        await self._db.write("finetune.job_progress", write)

    async def _store_answers(
        self, job_id: int, phase: str, prompts: list[str] | None, answers: list[str]
    ) -> None:
        """The regression answers of one phase, with their prompts (for the side-by-side
        view), sealed under the dataset's key."""

        def write(s: Tx) -> None:
            row = self._row(s, job_id)
            report = self._open_report(s, row)
            report[f"answers_{phase}"] = answers
            if prompts is not None:
                report["prompts"] = prompts
            key = self._keys.service_key_in(s, key_name(row.dataset_id), create=False)
            if key is None:
                raise NotFound("dataset: deleted while its job ran", field="dataset")
            row.report = seal(key, json.dumps(report).encode(), _report_aad(row))

        await self._db.write("finetune.job_report", write)

    def _open_report(self, s: Tx, row: FinetuneJob) -> dict[str, Any]:
        if not row.report:
            return {}
        key = self._keys.service_key_in(s, key_name(row.dataset_id), create=False)
        if key is None:
            return {"withheld": "the dataset was deleted, and its key with it"}
        opened: dict[str, Any] = json.loads(open_sealed(key, row.report, _report_aad(row)))
        return opened

    async def _finish(self, st: _State, code: int, job_dir: Path) -> dict[str, Any]:
        now = self._now()
        ok = code == 0 and st.adapter is not None and st.error is None
        sha = None
        if ok and st.adapter is not None:
            names = ("adapter_config.json", "adapter_model.safetensors")
            sha = files.digest({n: {"sha256": files.sha256_file(st.adapter / n)} for n in names})

        def write(s: Tx) -> FinetuneJob:
            row = self._row(s, st.job_id)
            if row.status != "running":  # cancelled meanwhile: already recorded
                return row
            row.pid, row.updated_at, row.step = None, now, st.step or row.step
            if ok:
                row.status, row.finished_at, row.adapter_sha256 = "succeeded", now, sha
                action, outcome = "finetune.job.finish", "ok"
            else:
                row.status, row.finished_at = "failed", now
                row.error = (st.error or _exit_reason(code))[:500]
                action, outcome = "finetune.job.fail", "error"
            extra = {
                "step": row.step,
                "resumed_from": st.resumed_from,
                "eval_loss_before": row.eval_before,
                "eval_loss_after": row.eval_after,
                "adapter_sha256": sha,
            }
            self._audit.append_in(
                s,
                Event.by_service(
                    action, outcome=outcome, target=f"finetune-job:{row.id}", extra=extra
                ),
            )
            return row

        row = await self._audit.transaction("finetune.job.end", write, "finetune.job")
        if ok:
            for old in job_dir.glob("checkpoint-*"):
                shutil.rmtree(old, ignore_errors=True)
            (job_dir / "latest.json").unlink(missing_ok=True)
        log.info("fine-tuning job ended", extra={"job": row.id, "status": row.status})
        return as_json(row, False)

    # -- cancelling ---------------------------------------------------------------------

    async def cancel(self, who: Identity | None, job_id: int) -> dict[str, Any]:
        """Stop a running job's worker (this host's) and record it cancelled; an interrupted
        or failed one is just marked cancelled (it will not resume)."""

        def write(s: Tx) -> FinetuneJob:
            row = self._row(s, job_id)
            if row.status not in ("running", "failed"):
                raise Conflict(f"job {job_id} is {row.status}", code="finetune_not_running")
            if row.status == "running" and row.host != self.host and self.alive(row):
                raise Conflict(
                    f"job {job_id} runs on {row.host}: cancel it there", code="finetune_other_host"
                )
            row.status, row.finished_at, row.updated_at = "cancelled", self._now(), self._now()
            self._audit.append_in(
                s,
                Event.by(
                    who,
                    "finetune.job.cancel",
                    target=f"finetune-job:{row.id}",
                    extra={"step": row.step},
                ),
            )
            return row

        row = await self._audit.transaction("finetune.job.cancel", write, "finetune.job")
        if row.pid is not None and row.host == self.host and _pid_alive(row.pid):
            os.kill(row.pid, signal.SIGTERM)
        return as_json(row)

    @staticmethod
    def _row(s: Tx, job_id: int) -> FinetuneJob:
        row = repo.job(s, job_id)
        if row is None:
            raise NotFound(f"job: no fine-tuning job {job_id}", field="job")
        return row


class _State:
    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.step = 0
        self.loss: float | None = None
        self.saved_at = 0.0
        self.adapter: Path | None = None
        self.error: str | None = None
        self.resumed_from = 0


def _event(line: bytes) -> dict[str, Any] | None:
    """One of the worker's events; None for anything else a library printed to stdout."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def _report_aad(row: FinetuneJob) -> bytes:
    return f"finetune-job:{row.id}:{row.dataset_id}".encode()


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a training worker still (a reused pid is not)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return (
            proc.status() != psutil.STATUS_ZOMBIE and "deepseekd.engine.training" in proc.cmdline()
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"the training process was killed by signal {-code}"
    return f"the training process exited with status {code}"
