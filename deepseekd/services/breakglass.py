"""Break-glass: emergency access (HIPAA 164.312(a)(2)(ii)).

A person named in ``[breakglass] allowed`` (or in a group named there) takes one elevated
right for a limited time, with a fresh second factor, a reason code and a reason:

* ``read_history``: read one user's chat history (the ONLY way anyone reads another
  person's history; every read is an audit event);
* ``lift_quota``: one user's daily quota does not refuse them (each request it lets through
  is an audit event);
* ``admin``: the holder acts as an admin (for a pre-staged local account while the
  directory that normally signs admins in is down).

The start, every action under it and the end (stopped, or expired by time) are audit
events; access ends at ``expires_at`` whatever happens to the expiry sweep; renewing means
starting another, with its own reason and event. Supervisors are told at start and end
(webhook and/or syslog), and an auditor reviews each one afterwards (the review queue).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from deepseekd.config import BreakGlassSettings
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Conflict, Forbidden, Invalid, NotFound
from deepseekd.domain.identity import Identity, cli_actor
from deepseekd.obs.notify import Notifier
from deepseekd.services.accounts import person_at_keyboard
from deepseekd.services.audit import AuditLog
from deepseekd.services.history import HistoryService
from deepseekd.store import Tx
from deepseekd.store import accounts as accounts_repo
from deepseekd.store import breakglass as repo
from deepseekd.store.db import Database

log = logging.getLogger("deepseekd.breakglass")

SCOPES = ("read_history", "lift_quota", "admin")
REASON_CODES = ("treatment", "recovery", "legal", "other")
REASON_CHARS = 500
COMMENT_CHARS = 2000
REASON_IN_EVENT = 300
"""The reason's first characters in the start event (its detail holds 512); the row has all."""
CACHE_S = 2.0
"""How stale the active list may be in another daemon (this one drops it on each change)."""

SecondFactor = Callable[[Identity, object, str | None], Awaitable[None]]


def _tag(bg_id: int, **more: Any) -> dict[str, Any]:
    """An event's detail naming the break-glass it happened under (JSON, "breakglass" first)."""
    return {"breakglass": bg_id, **more}


class BreakGlassService:
    def __init__(
        self,
        db: Database,
        cfg: BreakGlassSettings,
        audit: AuditLog,
        second_factor: SecondFactor,
        clock: Callable[[], float],
        history: HistoryService,
        notifier: Notifier | None = None,
    ) -> None:
        self._db = db
        self._history = history
        self.cfg = cfg
        self._audit = audit
        self._second_factor = second_factor
        self._now = clock
        self._notifier = notifier
        self._cache: tuple[float, list[dict[str, Any]]] = (float("-inf"), [])
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_counts: Callable[[int, int], None] = lambda _active, _overdue: None

    # -- who may ---------------------------------------------------------------------

    def may_start(self, name: str, groups: tuple[str, ...] = ()) -> bool:
        """Listed by name, or through a directory group ('group:NAME', case-insensitive)."""
        allowed = {a.strip() for a in self.cfg.allowed}
        wanted = {"group:" + g.casefold() for g in groups}
        return name in allowed or bool(wanted & {a.casefold() for a in allowed})

    # -- start and stop --------------------------------------------------------------

    async def start(
        self,
        who: Identity,
        *,
        scope: object,
        target: object = None,
        reason_code: object,
        reason: object,
        minutes: object = None,
        totp: object = None,
    ) -> dict[str, Any]:
        """Begin one. ``who`` proves a fresh second factor (``totp``) here, even inside an
        admin session: taking emergency rights is a decision made now, by the person."""
        if not self.may_start(who.name, who.groups):
            await self._audit.append(
                Event.by(
                    who,
                    "breakglass.start",
                    outcome="denied",
                    target=_target(scope, target)[:256],
                    detail="not in [breakglass] allowed",
                )
            )
            raise Forbidden(
                "you are not allowed to start a break-glass: ask IT to add you to "
                "[breakglass] allowed",
                code="breakglass_not_allowed",
            )
        scope, target, code, why, mins = self._check_request(
            who, scope, target, reason_code, reason, minutes
        )
        await self._second_factor(who, totp, who.client)

        begin = self._begin(who, scope, target, code, why, mins, self._now())
        started = await self._audit.transaction("breakglass.start", begin, "breakglass.start")
        self._changed()
        log.warning(
            "break-glass started",
            extra={"breakglass": started["id"], "scope": scope, "user_id": who.user_id},
        )
        self._notify("break-glass started", started)
        return self._view(started)

    def _begin(
        self,
        who: Identity,
        scope: str,
        target: str | None,
        code: str,
        why: str,
        mins: int,
        now: float,
    ) -> Callable[[Tx], dict[str, Any]]:
        """The start's transaction: the row and its audit event commit together."""

        def begin(s: Tx) -> dict[str, Any]:
            if target is not None:
                user = accounts_repo.user_by_name(s, target)
                if user is None or user.erased_at is not None:
                    raise NotFound(f"target: no user named '{target}'", field="target")
            row = repo.insert(
                s,
                user_id=who.user_id or None,
                actor=who.name,
                reason_code=code,
                reason=why,
                scope=scope,
                target=target,
                started_at=now,
                expires_at=now + mins * 60,
            )
            row.start_event = self._audit.append_in(
                s,
                Event.by(
                    who,
                    "breakglass.start",
                    target=_target(scope, target),
                    extra=_tag(
                        row.id,
                        scope=scope,
                        reason_code=code,
                        minutes=mins,
                        reason=why[:REASON_IN_EVENT],
                    ),
                ),
            )
            return repo.as_dict(row)

        return begin

    async def start_as(self, name: str, **request: Any) -> dict[str, Any]:
        """The command line (the network is down): ``name`` is the person at the keyboard,
        who proves it with their own fresh code, exactly as on the console."""
        who = await person_at_keyboard(self._db, name)
        try:
            return await self.start(who, **request)
        finally:
            await self.drain()  # the notices go out before the command exits

    def _check_request(
        self,
        who: Identity,
        scope: object,
        target: object,
        reason_code: object,
        reason: object,
        minutes: object,
    ) -> tuple[str, str | None, str, str, int]:
        if scope not in SCOPES:
            raise Invalid(f"scope: one of {', '.join(SCOPES)}", field="scope")
        if reason_code not in REASON_CODES:
            raise Invalid(f"reason_code: one of {', '.join(REASON_CODES)}", field="reason_code")
        if not isinstance(reason, str) or not reason.strip():
            raise Invalid("reason: say why, in words (required)", field="reason")
        if len(reason) > REASON_CHARS:
            raise Invalid(f"reason: at most {REASON_CHARS} characters", field="reason")
        mins = self.cfg.default_minutes if minutes is None else minutes
        if (
            isinstance(mins, bool)
            or not isinstance(mins, int)
            or not 1 <= mins <= self.cfg.max_minutes
        ):
            raise Invalid(
                f"minutes: a whole number from 1 to {self.cfg.max_minutes}", field="minutes"
            )
        if scope == "admin":
            if target not in (None, ""):
                raise Invalid("target: the admin scope names no user", field="target")
            return str(scope), None, str(reason_code), reason.strip(), mins
        if not isinstance(target, str) or not target.strip():
            raise Invalid(f"target: the user whose {_what(str(scope))} it is", field="target")
        if target == who.name:
            raise Invalid("target: your own account needs no break-glass", field="target")
        return str(scope), target, str(reason_code), reason.strip(), mins

    async def stop(self, who: Identity | None, bg_id: int) -> dict[str, Any]:
        """End one early: its holder, any admin, or the command line."""
        now = self._now()

        def end(s: Tx) -> dict[str, Any]:
            row = repo.get(s, bg_id, lock=True)
            if row is None:
                raise NotFound(f"no break-glass {bg_id}", field="id")
            if who is not None and who.role != "admin" and row.user_id != who.user_id:
                raise Forbidden("only its holder or an admin may stop it", field="id")
            if row.ended_at is not None or row.expires_at <= now:
                raise Conflict(f"break-glass {bg_id} has already ended", code="breakglass_inactive")
            repo.end(s, bg_id, now, "stopped")
            self._audit.append_in(s, _about(who, "breakglass.stop", row, scope=row.scope))
            s.flush()
            return repo.as_dict(row)

        ended = await self._audit.transaction("breakglass.stop", end, "breakglass.stop")
        ended.update(ended_at=now, end_reason="stopped")
        self._changed()
        self._notify("break-glass stopped", ended)
        return self._view(ended)

    async def expire_due(self) -> int:
        """Mark those past their time as ended (each with its own audit event). Access has
        already ended at ``expires_at``: this writes the record and tells supervisors."""
        now = self._now()

        def sweep(s: Tx) -> list[dict[str, Any]]:
            rows = repo.due_to_expire(s, now)
            for row in rows:
                repo.end(s, row.id, row.expires_at, "expired")
                self._audit.append_in(
                    s,
                    Event.by_service(
                        "breakglass.expire",
                        actor=row.actor,
                        target=_target(row.scope, row.target),
                        extra=_tag(row.id, scope=row.scope),
                    ),
                )
            return [
                {**repo.as_dict(r), "ended_at": r.expires_at, "end_reason": "expired"} for r in rows
            ]

        ended = await self._audit.transaction("breakglass.expire", sweep, "breakglass.expire")
        for row in ended:
            self._notify("break-glass expired", row)
        if ended:
            self._changed()
        await self.refresh_counts()
        return len(ended)

    # -- what an active one allows ---------------------------------------------------

    async def active(self) -> list[dict[str, Any]]:
        """Active sessions (cached briefly; each change here drops the cache)."""
        now = self._now()
        at, rows = self._cache
        if time.monotonic() - at > CACHE_S:
            rows = await self._db.read("breakglass.active", lambda s: repo.active(s, now))
            self._cache = (time.monotonic(), rows)
        return [r for r in rows if r["expires_at"] > now and r["ended_at"] is None]

    async def holding(self, who: Identity, scope: str, target: str | None = None) -> int | None:
        """The id of an active break-glass of ``who`` with that scope (and target)."""
        for row in await self.active():
            if (
                row["user_id"] == who.user_id
                and row["actor"] == who.name
                and row["scope"] == scope
                and row["target"] == target
            ):
                return int(row["id"])
        return None

    async def acts_as_admin(self, user_id: int, name: str) -> bool:
        """Holds an active admin-scope break-glass (the console's sign-in asks)."""
        return self.cfg.allowed != () and any(
            r["scope"] == "admin" and r["user_id"] == user_id and r["actor"] == name
            for r in await self.active()
        )

    async def elevate(self, who: Identity) -> Identity:
        """``who`` as an admin while they hold an active admin-scope break-glass."""
        if who.role in ("admin", "metrics") or not self.cfg.allowed:
            return who
        if await self.holding(who, "admin") is None:
            return who
        return dataclasses.replace(who, role="admin")

    async def quota_lift(self, who: Identity) -> int | None:
        """An active break-glass lifting ``who``'s daily quota, whoever holds it."""
        if not self.cfg.allowed:
            return None
        for row in await self.active():
            if row["scope"] == "lift_quota" and row["target"] == who.name:
                return int(row["id"])
        return None

    async def require(self, who: Identity, bg_id: int, scope: str) -> dict[str, Any]:
        """The caller's own active break-glass ``bg_id`` of ``scope``, or Forbidden."""
        for row in await self.active():
            if row["id"] == bg_id and row["scope"] == scope and row["user_id"] == who.user_id:
                return row
        raise Forbidden(
            f"break-glass {bg_id} is not an active {scope} session of yours (it ended, or "
            "was never yours)",
            code="breakglass_inactive",
        )

    # -- reading another person's history ---------------------------------------------

    async def read_list(self, who: Identity, bg_id: int) -> dict[str, Any]:
        """The target's conversations (titles and times), under break-glass ``bg_id``."""
        row = await self.require(who, bg_id, "read_history")
        owner = await self._owner(row["target"])
        await self.audit_read(who, bg_id, row["target"], "list")
        listed = await self._history.list_conversations(owner)
        return {"user": row["target"], "breakglass": bg_id, "conversations": listed}

    async def read_one(self, who: Identity, bg_id: int, conversation_id: str) -> dict[str, Any]:
        row = await self.require(who, bg_id, "read_history")
        owner = await self._owner(row["target"])
        await self.audit_read(who, bg_id, row["target"], f"conversation:{conversation_id[:64]}")
        return await self._history.get_conversation(owner, conversation_id)

    async def export_user(self, who: Identity | None, name: str) -> dict[str, Any]:
        """An export on a data subject's behalf: their history's content only for someone
        holding a read_history break-glass for them (the read is recorded first)."""
        bg_id = None if who is None else await self.holding(who, "read_history", name)
        if who is not None and bg_id is not None:
            await self.audit_read(who, bg_id, name, "export")
        return await self._history.export_user(name, by=who, with_history=bg_id is not None)

    async def _owner(self, name: str) -> Identity:
        user = await self._db.read(
            "breakglass.owner", lambda s: accounts_repo.user_by_name(s, name)
        )
        if user is None or user.erased_at is not None:
            raise NotFound(f"no user named '{name}' (erased?)", field="target")
        return Identity(user.id, user.name, user.role, "breakglass")

    # -- lists, review, notices --------------------------------------------------------

    async def mine(self, who: Identity) -> list[dict[str, Any]]:
        rows = await self._db.read(
            "breakglass.mine", lambda s: repo.of_user(s, who.user_id, who.name)
        )
        return [self._view(r) for r in rows]

    async def review_queue(self, *, unreviewed_only: bool) -> list[dict[str, Any]]:
        """Each session with the audit events it produced and the holder's events in its
        window (what was done under it)."""

        def read(s: Tx) -> list[dict[str, Any]]:
            rows = repo.for_review(s, unreviewed_only=unreviewed_only)
            return [{**self._view(r), "events": repo.events_of(s, r)} for r in rows]

        return await self._db.read("breakglass.reviews", read)

    async def review(self, who: Identity | None, bg_id: int, comment: object) -> dict[str, Any]:
        if not isinstance(comment, str) or not comment.strip():
            raise Invalid("comment: what the review found (required)", field="comment")
        if len(comment) > COMMENT_CHARS:
            raise Invalid(f"comment: at most {COMMENT_CHARS} characters", field="comment")
        now = self._now()

        def mark(s: Tx) -> dict[str, Any]:
            row = repo.get(s, bg_id, lock=True)
            if row is None:
                raise NotFound(f"no break-glass {bg_id}", field="id")
            if row.ended_at is None and row.expires_at > now:
                raise Conflict(
                    "it is still active: review it once it has ended", code="breakglass_active"
                )
            if row.reviewed_at is not None:
                raise Conflict(
                    f"break-glass {bg_id} was already reviewed by {row.reviewed_by}",
                    code="already_reviewed",
                )
            row.reviewed_at, row.review_comment = now, comment.strip()
            row.reviewed_by = who.name if who is not None else cli_actor()
            self._audit.append_in(s, _about(who, "breakglass.review", row, holder=row.actor))
            s.flush()
            return repo.as_dict(row)

        reviewed = await self._audit.transaction("breakglass.review", mark, "breakglass.review")
        await self.refresh_counts()
        return self._view(reviewed)

    async def refresh_counts(self) -> tuple[int, int]:
        """(active, unreviewed past review_hours) for the metrics and alerts."""
        now = self._now()
        active, overdue = await self._db.read(
            "breakglass.counts", lambda s: repo.counts(s, now, now - self.cfg.review_hours * 3600)
        )
        self.on_counts(active, overdue)
        return active, overdue

    async def audit_read(self, who: Identity, bg_id: int, target: str, what: str) -> None:
        """One read of ``target``'s history under break-glass ``bg_id``: recorded first
        (fails closed: no record, no read)."""
        await self._audit.append(
            Event.by(who, "breakglass.read", target=f"user:{target}", extra=_tag(bg_id, read=what))
        )

    async def audit_quota(self, who: Identity, bg_id: int, request_id: str | None) -> None:
        await self._audit.append(
            Event.by(
                who,
                "breakglass.quota",
                target=f"user:{who.name}",
                request_id=request_id,
                extra=_tag(bg_id),
            )
        )

    def _changed(self) -> None:
        self._cache = (float("-inf"), [])
        self._spawn(self.refresh_counts())

    def _notify(self, subject: str, row: dict[str, Any]) -> None:
        if self._notifier is None or not self._notifier.enabled:
            return
        body = {
            k: row[k]
            for k in (
                "id",
                "actor",
                "scope",
                "target",
                "reason_code",
                "started_at",
                "expires_at",
                "ended_at",
                "end_reason",
            )
        }
        self._spawn(self._notifier.send(subject, body))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("break-glass background step failed")

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for notices in flight (the CLI exits right after a start)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _view(self, row: dict[str, Any]) -> dict[str, Any]:
        now = self._now()
        active = row["ended_at"] is None and row["expires_at"] > now
        out = {k: row[k] for k in repo.FIELDS if k not in ("user_id", "start_event")}
        return {**out, "active": active}


def _target(scope: object, target: object) -> str:
    return "admin" if scope == "admin" else f"user:{target}"


def _what(scope: str) -> str:
    return "history" if scope == "read_history" else "quota"


def _about(who: Identity | None, action: str, row: Any, **more: Any) -> Event:
    """An event by ``who`` about break-glass ``row`` (its id first in the detail)."""
    return Event.by(who, action, target=_target(row.scope, row.target), extra=_tag(row.id, **more))
