"""The audit log: append-only, hash-chained with a keyed hash, in the same database.

``hash`` is HMAC-SHA256(audit key, prev_hash ‖ canonical row), so a change, deletion or
reordering of rows breaks the chain, and forging a new chain needs the audit key, which only
exists wrapped by the master key. An event is written either inside the caller's own
transaction (``append_in``: the change and its record commit together) or in one of its own
(``append``); either way a failure is never swallowed: the caller fails closed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from deepseekd.domain.audit import CHAIN_FIELDS, GENESIS, Event, VerifyResult
from deepseekd.domain.errors import AuditUnavailable, DomainError, StoreUnavailable
from deepseekd.security.chain import chain_hash, content_hmac, same
from deepseekd.store import Tx
from deepseekd.store import audit as repo
from deepseekd.store.db import Database

log = logging.getLogger("deepseekd.audit")


class AuditLog:
    def __init__(
        self,
        db: Database,
        key: Callable[[], bytes],
        clock: Callable[[], float],
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._key = key
        self._now = clock
        self.failures = 0
        self.on_failure = on_failure

    def content_hmac(self, text: str) -> str:
        """A keyed hash of content: proves later what was said, without storing it."""
        return content_hmac(self._key(), text)

    def append_in(self, s: Tx, ev: Event) -> int:
        """Append inside the caller's write transaction; returns the event id."""
        locked = repo.lock_head(s)
        prev_id, prev_hash = locked if locked is not None else (0, GENESIS)
        row = ev.row(prev_id + 1, self._now())
        repo.append(
            s, row, prev_hash, chain_hash(self._key(), prev_hash, row), first=locked is None
        )
        return int(row["id"])

    async def append(self, ev: Event) -> int:
        """Append in a transaction of its own; raises AuditUnavailable (fail closed)."""
        try:
            return await self._db.write("audit.append", lambda s: self.append_in(s, ev))
        except Exception as exc:
            self.record_failure(exc, ev.action)
            raise AuditUnavailable(str(exc)) from exc

    async def write_with(self, name: str, ev: Event, fn: Callable[[Tx], Any]) -> Any:
        """Run ``fn`` and append ``ev`` in one transaction: a change and its record commit
        together or not at all."""

        def both(s: Tx) -> Any:
            result = fn(s)
            self.append_in(s, ev)
            return result

        return await self.transaction(name, both, ev.action)

    async def transaction(self, name: str, fn: Callable[[Tx], Any], action: str) -> Any:
        """Run ``fn``, which appends its own audit event(s), as transaction ``name``. A
        database fault is StoreUnavailable, any other failure to write AuditUnavailable
        (both counted as failed audit writes); a DomainError that ``fn`` raised (the
        conversation was deleted meanwhile) is its own."""
        try:
            return await self._db.write(name, fn)
        except StoreUnavailable as exc:
            self.record_failure(exc, action)
            raise
        except DomainError:
            raise
        except Exception as exc:
            self.record_failure(exc, action)
            raise AuditUnavailable(str(exc)) from exc

    def record_failure(self, exc: BaseException, action: str) -> None:
        self.failures += 1
        self.on_failure()
        log.error("audit write failed", extra={"action": action, "error": type(exc).__name__})

    async def head(self) -> tuple[int, str]:
        return await self._db.read("audit.head", repo.head)

    async def verify(
        self, batch: int = 5000, expect: tuple[int, str] | None = None
    ) -> VerifyResult:
        """Walk the chain; the first event that does not fit is named. ``expect``: an
        anchor (event id, hash) kept outside the database, which the chain must still hold
        (a chain rewritten with the audit key, or cut below it, does not)."""
        result = await self._walk(batch, expect)
        if result.ok and expect is not None and expect[0] > result.head_id:
            return VerifyResult(
                False,
                result.events,
                result.head_id,
                result.head_hash,
                expect[0],
                f"the anchor names event {expect[0]} but the chain "
                f"ends at event {result.head_id}: events were cut",
            )
        return result

    async def _walk(self, batch: int, expect: tuple[int, str] | None) -> VerifyResult:
        key = self._key()
        expected_id, prev_hash, count = 1, GENESIS, 0
        async for ev in self._iter(batch):
            row = {k: ev[k] for k in CHAIN_FIELDS}
            if ev["id"] != expected_id:
                return VerifyResult(
                    False,
                    count,
                    expected_id - 1,
                    prev_hash,
                    expected_id,
                    f"event {expected_id} is missing (found {ev['id']} next): deleted or reordered",
                )
            if ev["prev_hash"] != prev_hash:
                return VerifyResult(
                    False,
                    count,
                    ev["id"] - 1,
                    prev_hash,
                    ev["id"],
                    f"event {ev['id']} does not follow event {ev['id'] - 1}: "
                    "an earlier event was changed, deleted or reordered",
                )
            if not same(chain_hash(key, prev_hash, row), ev["hash"]):
                return VerifyResult(
                    False,
                    count,
                    ev["id"] - 1,
                    prev_hash,
                    ev["id"],
                    f"event {ev['id']} was changed after it was written",
                )
            if expect is not None and ev["id"] == expect[0] and not same(ev["hash"], expect[1]):
                return VerifyResult(
                    False,
                    count,
                    ev["id"] - 1,
                    prev_hash,
                    ev["id"],
                    f"event {ev['id']} is not the one the anchor recorded: the chain was rewritten",
                )
            prev_hash, expected_id, count = ev["hash"], expected_id + 1, count + 1
        head_id, head_hash = await self.head()
        if (head_id, head_hash) != (expected_id - 1, prev_hash):
            return VerifyResult(
                False,
                count,
                expected_id - 1,
                prev_hash,
                expected_id,
                f"the chain ends at event {expected_id - 1} but the head "
                f"records event {head_id}: events were cut from the end",
            )
        return VerifyResult(True, count, head_id, head_hash)

    async def _iter(self, batch: int) -> AsyncIterator[dict[str, Any]]:
        after = 0
        while True:
            rows = await self._db.read("audit.verify", self._page(after, batch))
            if not rows:
                return
            for ev in rows:
                yield ev
            after = rows[-1]["id"]

    @staticmethod
    def _page(after: int, batch: int) -> Callable[[Tx], list[dict[str, Any]]]:
        return lambda s: repo.events_after(s, after, batch)

    async def query(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        after_id: int = 0,
        before_id: int | None = None,
        newest_first: bool = False,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Events matching every filter given, ``limit`` at most: after ``after_id`` and
        before ``before_id``, the oldest first (or the newest, with ``newest_first``)."""
        return await self._db.read(
            "audit.query",
            lambda s: repo.query(
                s,
                since=since,
                until=until,
                actor=actor,
                action=action,
                outcome=outcome,
                after_id=after_id,
                before_id=before_id,
                newest_first=newest_first,
                limit=limit,
            ),
        )
