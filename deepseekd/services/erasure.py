"""Erasure (GDPR Art. 17): after it, nothing of the user can be read or stored again,
whatever was in flight, and a database backup taken before it cannot be read with the
master key that remains.

In order, each step a transaction or an act of its own, so a crash between two leaves a
state the next run of the same erasure completes:

1. fence: the account is disabled and marked erased, its sessions end and its API keys are
   revoked; from this commit on, no turn of the user is stored and no data key is made
   (``HistoryService.seal_in`` checks the mark under a lock on the user row);
2. the user's requests in flight in this daemon are stopped and their closes awaited (an
   erasure run from the CLI cannot reach the daemon's; the fence stops those from storing);
3. shred: the wrapped data key is destroyed and every conversation and turn deleted, with
   the ``user.erase`` audit event;
4. the database forgets the deleted bytes as far as it can (``Database.forget_deleted``);
5. epoch: the master key is rotated and the old version's file deleted, so a database
   backup from before the erasure needs a master key version that no longer exists on the
   box (not possible with systemd credentials: read-only key files; the result says so).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from deepseekd.config import Settings
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Conflict
from deepseekd.domain.identity import Identity
from deepseekd.services.accounts import require_user
from deepseekd.services.audit import AuditLog
from deepseekd.services.chat import ChatService
from deepseekd.services.keys import KeyService
from deepseekd.store import Tx
from deepseekd.store import accounts as accounts_repo
from deepseekd.store import history as history_repo
from deepseekd.store.db import Database

log = logging.getLogger("deepseekd.erasure")

USER_TABLES = ("user_keys", "turns", "conversations")


class ErasureService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        keys: KeyService,
        audit: AuditLog,
        chat: ChatService,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._db = db
        self._keys = keys
        self._audit = audit
        self._chat = chat
        self._now = clock
        self._taken_up: set[tuple[int, float]] = set()

    async def erase(self, name: str, *, by: Identity | None = None) -> dict[str, Any]:
        user_id = await self._fence(name)
        stopped = await self._chat.stop_user(user_id, "erased")
        destroyed, conversations = await self._shred(name, user_id, stopped, by)
        forgotten = await self._db.forget_deleted(USER_TABLES)
        rotated = None
        if self._settings.keys.rotate_on_erasure:
            try:
                rotated = (await self._keys.rotate(None, automatic=True, why=f"erasure of {name}"))[
                    1
                ]
            except Conflict as exc:  # systemd credentials, or a rotation already running
                forgotten += f"; master key not rotated: {exc.message}"
        log.info("user erased", extra={"user": name, "requests_stopped": stopped})
        return {
            "name": name,
            "erased": True,
            "data_key_destroyed": destroyed,
            "conversations_deleted": conversations,
            "requests_cancelled": stopped,
            "master_key_version": rotated,
            "storage": forgotten,
        }

    async def take_up(self, since: float) -> list[int]:
        """A replica's part of an erasure another replica made (``[cluster]`` sync): the
        user's answers streaming here are stopped (none would be stored: the fence holds
        everywhere) and their data key leaves this daemon's memory. Returns the user ids
        newly taken up."""
        erased = await self._db.read(
            "erasure.since", lambda s: accounts_repo.erased_since(s, since)
        )
        fresh = [(uid, at) for uid, at in erased if (uid, at) not in self._taken_up]
        for uid, at in fresh:
            self._taken_up.add((uid, at))
            self._keys.forget_user_key(uid)
            stopped = await self._chat.stop_user(uid, "erased")
            if stopped:
                log.info(
                    "requests of a user erased on another replica stopped",
                    extra={"requests_stopped": stopped},
                )
        return [uid for uid, _ in fresh]

    async def _fence(self, name: str) -> int:
        now = self._now()

        def fence(s: Tx) -> int:
            user = require_user(s, name)
            if user.erased_at is None:
                user.erased_at = now
            user.disabled, user.password_hash, user.totp_secret = True, None, None
            accounts_repo.end_sessions_of(s, user.id, now)
            accounts_repo.revoke_keys_of(s, user.id, now)
            return int(user.id)

        return await self._audit.transaction("user.erase.fence", fence, "user.erase.fence")

    async def _shred(
        self, name: str, user_id: int, stopped: int, by: Identity | None
    ) -> tuple[bool, int]:
        def shred(s: Tx) -> tuple[bool, int]:
            destroyed = self._keys.destroy_user_key(s, user_id)
            conversations = history_repo.delete_all_of(s, user_id)
            self._audit.append_in(
                s,
                Event.by(
                    by,
                    "user.erase",
                    target=f"user:{name}",
                    detail=f"{conversations} conversations, {stopped} requests cancelled, "
                    f"data key destroyed: {destroyed}",
                ),
            )
            return destroyed, conversations

        return await self._audit.transaction("user.erase", shred, "user.erase")
