"""Group commit for SQLite: one thread, one connection, many transactions per fsync.

Every write of the process comes here (``Database.write``), so writes are ordered on one
connection. A job is plain synchronous SQLAlchemy code, run in the writer's own thread; jobs
that arrive together share one ``BEGIN IMMEDIATE`` … ``COMMIT`` (``synchronous=FULL``: one
fsync for all of them). When a job of a batch fails, the whole batch rolls back and each job
runs again alone, so one job's error is that job's only; a fault of the database itself (the
lock held elsewhere past the busy timeout, a full disk) fails the whole batch at once instead
of making each job wait for it again. A job's caller hears back only after its commit.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
T = TypeVar("T")

AFTER_COMMIT = "deepseekd.after_commit"
"""``session.info`` key: callables to run once the transaction has committed."""

MAX_BATCH = 256


def after_commit(session: Session, fn: Callable[[], None]) -> None:
    """Run ``fn`` when (and only if) the session's transaction commits."""
    session.info.setdefault(AFTER_COMMIT, []).append(fn)


def run_after_commit(session: Session) -> None:
    for fn in session.info.pop(AFTER_COMMIT, ()):
        fn()


class _Job:
    __slots__ = ("error", "fn", "future", "loop", "result")

    def __init__(self, fn: Callable[[Session], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.result: Any = None
        self.error: BaseException | None = None


def _settle(job: _Job) -> None:
    if job.future.done():  # the caller was cancelled; the write happened all the same
        return
    if job.error is not None:
        job.future.set_exception(job.error)
    else:
        job.future.set_result(job.result)


class GroupWriter:
    """Runs write jobs on one SQLite connection in a thread of its own."""

    def __init__(
        self, engine: Engine, transient: Callable[[BaseException], bool] = lambda exc: False
    ) -> None:
        self.engine = engine
        self._engine = engine.execution_options(sqlite_immediate=True)
        self._transient = transient
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name="deepseekd-sqlite-writer", daemon=True
        )
        self._thread.start()
        self.batches = 0
        self.jobs = 0

    async def submit(self, fn: Callable[[Session], T]) -> T:
        job = _Job(fn, asyncio.get_running_loop())
        self._queue.put(job)
        return await job.future

    def close(self) -> None:
        """Commit what is queued, then stop the thread and close the connection."""
        self._queue.put(None)
        self._thread.join()
        self.engine.dispose()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Job]) -> None:
        self.batches += 1
        self.jobs += len(batch)
        if not self._transaction(batch) and len(batch) > 1:
            fault = next(
                (j.error for j in batch if j.error is not None and self._transient(j.error)), None
            )
            if fault is not None:
                for job in batch:  # the database itself failed: every job gets that answer
                    job.error = fault
            else:
                # One job failed: nothing of the batch is stored. Run each job alone, so one
                # job's error is that job's answer only.
                for job in batch:
                    job.error = None
                    self._transaction([job])
        for job in batch:
            try:
                job.loop.call_soon_threadsafe(_settle, job)
            except RuntimeError:  # the caller's loop is closed
                pass

    def _transaction(self, jobs: list[_Job]) -> bool:
        """Run ``jobs`` in one transaction; True if it committed."""
        try:
            with Session(self._engine, expire_on_commit=False) as s:
                with s.begin():
                    for job in jobs:
                        try:
                            job.result = job.fn(s)
                        except Exception as exc:
                            job.error = exc
                            raise
                run_after_commit(s)
            return True
        except Exception as exc:  # rolled back: nothing of these jobs is stored
            for job in jobs:
                if job.error is None:
                    job.error = exc
            return False
