"""The acceptable-use notice: text an admin sets (plain text; empty = no notice), kept as
versions, which each user of the chat page accepts once per version before chatting.

A change is a new version, audited (``notice.change``) with its length and SHA-256, never
its text; an acceptance is stored per user and version and audited (``notice.accept``).
Only browser sessions of the chat page are held to it (``require_accepted``): a program
calling with an API key cannot read a dialog, so its owner answers for it (README, Web
pages).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Conflict, Forbidden
from deepseekd.domain.identity import Identity
from deepseekd.domain.text import plain_text
from deepseekd.services.audit import AuditLog
from deepseekd.store import Tx
from deepseekd.store import notice as repo
from deepseekd.store.db import Database

NOTICE_CHARS = 4000
"""Control characters but tab and line feed (carriage returns are folded into line feeds)."""


def clean_text(text: str) -> str:
    """The notice as stored: line breaks as ``\\n``, no leading or trailing blank space."""
    return plain_text(text, NOTICE_CHARS)


def changed(version: int) -> Conflict:
    return Conflict(
        f"version: the notice in force is version {version}; read it again and accept that one"
        if version
        else "version: there is no notice to accept",
        field="version",
        code="notice_changed",
    )


class NoticeService:
    def __init__(self, db: Database, audit: AuditLog, clock: Callable[[], float]) -> None:
        self._db = db
        self._audit = audit
        self._now = clock

    async def current(self) -> dict[str, Any]:
        """The notice in force, for the admin: text, version, who set it and when, and how
        many users accepted it (version 0: never set)."""

        def read(s: Tx) -> dict[str, Any]:
            row = repo.current(s)
            if row is None:
                return {
                    "version": 0,
                    "text": "",
                    "sha256": None,
                    "updated_at": None,
                    "updated_by": None,
                    "accepted_by": 0,
                }
            return {
                "version": row.version,
                "text": row.text,
                "sha256": row.sha256,
                "updated_at": row.created_at,
                "updated_by": row.created_by,
                "accepted_by": repo.acceptances(s, row.version) if row.text else 0,
            }

        found = await self._db.read("notice.current", read)
        return {
            "object": "notice",
            **found,
            "active": bool(found["text"]),
            "max_chars": NOTICE_CHARS,
        }

    async def publish(self, who: Identity, text: str) -> dict[str, Any]:
        """Set the notice (empty: none); a new version unless the text is the same as the
        one in force, so saving twice asks nobody again."""
        clean = clean_text(text)
        now = self._now()

        def write(s: Tx) -> bool:
            row = repo.current(s)
            if (row.text if row is not None else "") == clean:
                return False
            digest = hashlib.sha256(clean.encode()).hexdigest()
            new = repo.add(s, clean, digest, now, who.name)
            self._audit.append_in(
                s,
                Event.by(
                    who,
                    "notice.change",
                    target=f"notice:{new.version}",
                    extra={"chars": len(clean), "sha256": digest},
                ),
            )
            return True

        done = await self._audit.transaction("notice.change", write, "notice.change")
        return {**(await self.current()), "changed": done}

    async def pending(self, who: Identity) -> dict[str, Any] | None:
        """The notice ``who`` has still to accept ({"version", "text"}), or None."""

        def read(s: Tx) -> dict[str, Any] | None:
            row = repo.current(s)
            if row is None or not row.text or repo.accepted(s, who.user_id, row.version):
                return None
            return {"version": row.version, "text": row.text}

        return await self._db.read("notice.pending", read)

    async def accept(self, who: Identity, version: int) -> dict[str, Any]:
        """Record that ``who`` accepted ``version``, which must be the one in force (409
        ``notice_changed`` otherwise: the page shows the new one). Accepting again is a
        no-op that is not audited twice."""
        now = self._now()

        def write(s: Tx) -> None:
            row = repo.current(s)
            if row is None or not row.text or row.version != version:
                raise changed(row.version if row is not None and row.text else 0)
            if repo.accepted(s, who.user_id, version):
                return
            repo.accept(s, who.user_id, version, now)
            self._audit.append_in(
                s,
                Event.by(
                    who, "notice.accept", target=f"notice:{version}", extra={"sha256": row.sha256}
                ),
            )

        await self._audit.transaction("notice.accept", write, "notice.accept")
        return {"object": "notice.acceptance", "version": version, "accepted": True}

    async def require_accepted(self, who: Identity) -> None:
        """Refuse (403 ``notice_not_accepted``) a chat by someone with a notice pending."""
        pending = await self.pending(who)
        if pending is not None:
            raise Forbidden(
                f"accept the acceptable-use notice (version {pending['version']}) on the chat "
                "page before chatting",
                code="notice_not_accepted",
            )
