"""The audit forwarder: every audit event, in order and at least once, to each SIEM sink.

Per sink, one loop: take the sink's lock (one daemon forwards a sink at a time, whatever
number share the database), read the sink's cursor, then repeatedly read the events after
it in id order (``[siem] batch`` at a time), send them, and move the cursor to the last one
only once the sink acknowledged the batch (obs/siem.py says what acknowledged means per
transport). A batch that is not acknowledged is sent again, whole, after a wait that
doubles up to ``[siem] retry_max_s``; nothing is ever skipped. So a receiver outage loses
nothing, a restart resumes after the cursor, and the only duplicates are a batch whose
acknowledgement came but whose cursor write did not (a crash between the two) or one
re-sent after a receiver read part of it: the SIEM deduplicates by event id and hash.

The forwarder checks the chain's links as it goes (each batch must continue from the hash
the cursor holds) and says so in the log when they do not: it holds no audit key, so it
cannot verify the hashes, but the SIEM, holding every hash, is the outside anchor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deepseekd.config import ConfigError, SiemSettings
from deepseekd.domain.errors import DomainError
from deepseekd.obs.metrics import Metrics
from deepseekd.obs.siem import (
    HttpJsonl,
    JsonlFile,
    SyslogFormat,
    Transport,
    syslog_transport,
)
from deepseekd.security.tls import TlsError, client_context
from deepseekd.services.audit import AuditLog
from deepseekd.store import audit as audit_repo
from deepseekd.store import export_cursors as repo
from deepseekd.store.db import Database
from deepseekd.store.export_cursors import Cursor, ForwarderLock

log = logging.getLogger("deepseekd.siem")

FIRST_RETRY_S = 0.5
STANDBY_S = 5.0
STOP_GRACE_S = 10.0
"""How often a daemon whose sink another daemon forwards asks for it again (at most)."""


class LockLost(Exception):
    """Another daemon forwards this sink now (our lock's connection ended, or the cursor
    moved under us)."""


@dataclass
class Sink:
    name: str
    transport: Transport
    lock: ForwarderLock
    in_flight: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held from a batch's send until its cursor is written: a stop waits for it."""


class SiemForwarder:
    """``await forwarder.run()`` in a task; ``await forwarder.stop(task)`` then
    ``await forwarder.close()`` after."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        sinks: list[Sink],
        cfg: SiemSettings,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self._db = db
        self._audit = audit
        self.sinks = sinks
        self._cfg = cfg
        self._metrics = metrics
        self._now = clock

    @classmethod
    def from_settings(
        cls,
        cfg: SiemSettings,
        db: Database,
        audit: AuditLog,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> SiemForwarder | None:
        """The forwarder of the configured sinks; None when none is. Raises ConfigError
        when a certificate, key or CA file cannot be loaded."""
        transports: dict[str, Transport] = {}
        if cfg.syslog_url:
            fmt = SyslogFormat(cfg.app_name, cfg.facility)
            tls = _tls(cfg) if cfg.syslog_url.startswith("tls://") else None
            transports["syslog"] = syslog_transport(cfg.syslog_url, fmt, tls, cfg.timeout_s)
        if cfg.jsonl_path:
            transports["jsonl"] = JsonlFile(cfg.jsonl_path)
        if cfg.http_url:
            tls = _tls(cfg) if cfg.http_url.startswith("https://") else None
            transports["http"] = HttpJsonl(cfg.http_url, tls, cfg.timeout_s)
        if not transports:
            return None
        sinks = [Sink(name, t, ForwarderLock(db, name)) for name, t in transports.items()]
        return cls(db, audit, sinks, cfg, metrics, clock)

    async def run(self) -> None:
        await asyncio.gather(*(self.serve(sink) for sink in self.sinks))

    async def stop(self, task: asyncio.Task[None], grace_s: float = STOP_GRACE_S) -> None:
        """Stop forwarding: a batch the SIEM has acknowledged gets its cursor written first
        (cancelled between the two, the restarted daemon would send it again), waiting at
        most ``grace_s`` for one stuck on the network; then ``task`` is cancelled."""
        held: list[asyncio.Lock] = []
        try:
            async with asyncio.timeout(grace_s):
                for sink in self.sinks:
                    await sink.in_flight.acquire()
                    held.append(sink.in_flight)
        except TimeoutError:
            log.warning("stopping with an audit batch in flight; it is sent again on restart")
        try:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            for lock in held:
                lock.release()

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.lock.release()
            await sink.transport.close()

    async def serve(self, sink: Sink) -> None:
        """Forward ``sink`` whenever this daemon holds its lock; never returns."""
        standby = False
        while True:
            try:
                held = await sink.lock.acquire()
            except Exception as exc:  # the database is down: ask again later
                log.warning("cannot take the sink's lock", extra=_why(sink, exc))
                await asyncio.sleep(self.retry_delay(1))
                continue
            if not held:
                if not standby:
                    log.info("another daemon forwards this sink", extra={"sink": sink.name})
                standby = True
                self._lag(sink, 0)  # the daemon forwarding it reports the lag
                await asyncio.sleep(min(STANDBY_S, self._cfg.retry_max_s))
                continue
            standby = False
            try:
                await self._forward(sink)
            except LockLost as exc:
                log.warning("stopped forwarding this sink", extra=_why(sink, exc))
            except Exception as exc:  # the cursor could not be read: start over shortly
                log.warning("cannot forward this sink", extra=_why(sink, exc))
                await asyncio.sleep(self.retry_delay(1))
            finally:
                await sink.lock.release()

    async def _forward(self, sink: Sink) -> None:
        """While the lock is ours: batch after batch; failures wait and retry the same one."""
        cursor = await self._db.read("siem.cursor", lambda s: repo.get(s, sink.name))
        log.info("forwarding audit events", extra={"sink": sink.name, "after_id": cursor.last_id})
        failures = 0
        while True:
            try:
                sent, cursor = await self.forward_batch(sink, cursor)
            except (LockLost, asyncio.CancelledError):
                raise
            except Exception as exc:
                failures += 1
                self._metrics.siem_errors.labels(sink.name).inc()
                log.warning(
                    "audit batch not acknowledged; retrying",
                    extra={**_why(sink, exc), "after_id": cursor.last_id, "failures": failures},
                )
                await self._show_lag(sink, cursor)
                await asyncio.sleep(self.retry_delay(failures))
                continue
            if failures:
                log.info(
                    "audit forwarding resumed", extra={"sink": sink.name, "failures": failures}
                )
                failures = 0
            if not sent:
                await asyncio.sleep(self._cfg.poll_interval_s)

    def retry_delay(self, failures: int) -> float:
        return float(min(self._cfg.retry_max_s, FIRST_RETRY_S * 2 ** min(failures - 1, 30)))

    async def forward_batch(self, sink: Sink, cursor: Cursor) -> tuple[int, Cursor]:
        """Send the events after ``cursor`` (one batch) and move the cursor past them once
        acknowledged. Returns how many were sent, and the cursor now."""
        if not await sink.lock.held():
            raise LockLost("the lock's database connection ended")
        head_id, head_hash = await self._audit.head()
        if head_id < cursor.last_id:
            cursor = await self._rewind(sink, cursor, Cursor(head_id, head_hash))
        events = await self._db.read("siem.events", _page(cursor.last_id, self._cfg.batch))
        self._lag(sink, head_id - cursor.last_id)
        if not events:
            return 0, cursor
        _check_links(sink, cursor, events)
        new = Cursor(events[-1]["id"], events[-1]["hash"])
        async with sink.in_flight:
            await sink.transport.send(events)
            await self._move(sink, cursor, new)
        self._metrics.siem_sent.labels(sink.name).inc(len(events))
        self._lag(sink, head_id - new.last_id)
        return len(events), new

    async def _move(self, sink: Sink, old: Cursor, new: Cursor) -> None:
        now = self._now()
        moved = await self._db.write(
            "siem.advance", lambda s: repo.advance(s, sink.name, old, new, now)
        )
        if not moved:
            raise LockLost(f"the cursor is no longer at event {old.last_id}")

    async def _rewind(self, sink: Sink, cursor: Cursor, head: Cursor) -> Cursor:
        """The chain ends before the cursor: the database was restored from an older backup.
        The events written from now on take ids the SIEM already has; forward them all the
        same (the SIEM sees two hashes for one id: the restore is on record)."""
        log.error(
            "the audit chain is shorter than what this sink already acknowledged (database "
            "restored from a backup?); forwarding from the chain's end",
            extra={"sink": sink.name, "cursor_id": cursor.last_id, "head_id": head.last_id},
        )
        await self._move(sink, cursor, head)
        return head

    def _lag(self, sink: Sink, events: int) -> None:
        self._metrics.siem_lag.labels(sink.name).set(max(events, 0))

    async def _show_lag(self, sink: Sink, cursor: Cursor) -> None:
        """The lag while the sink fails (it grows with every event); best effort."""
        try:
            head_id, _ = await self._audit.head()
        except (DomainError, OSError):
            return
        self._lag(sink, head_id - cursor.last_id)


def _tls(cfg: SiemSettings) -> ssl.SSLContext:
    try:
        return client_context("siem", cfg.ca_file, cfg.cert_file, cfg.key_file)
    except TlsError as exc:
        raise ConfigError(str(exc)) from None


def _page(after: int, limit: int) -> Callable[[Any], list[dict[str, Any]]]:
    return lambda s: audit_repo.events_after(s, after, limit)


def _check_links(sink: Sink, cursor: Cursor, events: list[dict[str, Any]]) -> None:
    """Each event must follow the one before it (the cursor's first): an event changed or
    deleted after it was forwarded shows here. Logged, and forwarded all the same."""
    prev_id, prev_hash = cursor
    for ev in events:
        if ev["id"] != prev_id + 1 or ev["prev_hash"] != prev_hash:
            log.error(
                "audit chain broken: an event does not follow the one before it (changed or "
                "deleted after it was written?); forwarding it as it is",
                extra={"sink": sink.name, "event_id": ev["id"], "after_id": prev_id},
            )
        prev_id, prev_hash = ev["id"], ev["hash"]


def _why(sink: Sink, exc: BaseException) -> dict[str, str]:
    return {"sink": sink.name, "error": f"{type(exc).__name__}: {exc}"}
