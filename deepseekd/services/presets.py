"""Shared system-prompt presets ("Discharge summary", "Explain to a patient"): admins
create, replace and delete them; every chat user reads them (``GET /v1/presets``) and the
chat page fills a conversation's system prompt from the one chosen.

A preset is plain text an admin writes, not patient data: it is stored as it is (not
sealed). A change is audited (``preset.change``, ``preset.delete``) with the name and the
text's length, never the text, to keep the audit log small.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Invalid, NotFound
from deepseekd.domain.identity import Identity
from deepseekd.domain.text import plain_text
from deepseekd.services.audit import AuditLog
from deepseekd.store import Tx
from deepseekd.store import presets as repo
from deepseekd.store.db import Database
from deepseekd.store.schema import Preset

NAME_CHARS = 80
TEXT_CHARS = 4000
"""Control characters but tab and line feed (carriage returns are folded into line feeds)."""
_NAME_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f/\\]")


def clean_name(name: str) -> str:
    """A preset's name as stored: trimmed, 1 to 80 characters, one line, no slashes (it is
    a path segment of the admin API)."""
    clean = " ".join(name.split())
    if not clean:
        raise Invalid("name: a preset needs a name", field="name")
    if len(clean) > NAME_CHARS:
        raise Invalid(
            f"name: at most {NAME_CHARS} characters (this one has {len(clean)})", field="name"
        )
    if _NAME_BAD.search(clean):
        raise Invalid("name: plain text without slashes or control characters", field="name")
    return clean


def clean_text(text: str) -> str:
    """A preset's text as stored: line breaks as ``\\n``, trimmed, 1 to 4000 characters."""
    clean = plain_text(text, TEXT_CHARS)
    if not clean:
        raise Invalid("text: a preset needs a text (delete it instead)", field="text")
    return clean


def as_json(row: Preset, admin: bool) -> dict[str, Any]:
    """A preset as the API shows it; who changed it last and when only to admins."""
    out: dict[str, Any] = {"object": "preset", "name": row.name, "text": row.text}
    if admin:
        out["updated_at"] = row.updated_at
        out["updated_by"] = row.updated_by
    return out


class PresetService:
    def __init__(self, db: Database, audit: AuditLog, clock: Callable[[], float]) -> None:
        self._db = db
        self._audit = audit
        self._now = clock

    async def list(self, admin: bool = False) -> dict[str, Any]:
        """Every preset by name (``admin``: with who changed it last and when)."""

        def read(s: Tx) -> list[dict[str, Any]]:
            return [as_json(row, admin) for row in repo.all_presets(s)]

        data = await self._db.read("presets.list", read)
        out: dict[str, Any] = {"object": "list", "data": data}
        if admin:
            out["max_name_chars"], out["max_text_chars"] = NAME_CHARS, TEXT_CHARS
        return out

    async def put(self, who: Identity, name: str, text: str) -> dict[str, Any]:
        """Create the preset ``name`` or replace its text; audited unless nothing changed."""
        name, text = clean_name(name), clean_text(text)
        now = self._now()

        def write(s: Tx) -> dict[str, Any]:
            old = repo.by_name(s, name)
            if old is not None and old.text == text:
                return {**as_json(old, True), "created": False, "changed": False}
            row, created = repo.put(s, name, text, now, who.name)
            self._audit.append_in(
                s,
                Event.by(
                    who,
                    "preset.change",
                    target=f"preset:{name}",
                    extra={"chars": len(text), "created": created},
                ),
            )
            return {**as_json(row, True), "created": created, "changed": True}

        done: dict[str, Any] = await self._audit.transaction(
            "preset.change", write, "preset.change"
        )
        return done

    async def delete(self, who: Identity, name: str) -> dict[str, Any]:
        """Delete the preset ``name`` (404 when there is none)."""

        def write(s: Tx) -> None:
            old = repo.by_name(s, name)
            if old is None:
                raise NotFound(f"name: no preset named {name!r}", field="name")
            chars = len(old.text)
            repo.delete(s, name)
            self._audit.append_in(
                s,
                Event.by(who, "preset.delete", target=f"preset:{name}", extra={"chars": chars}),
            )

        await self._audit.transaction("preset.delete", write, "preset.delete")
        return {"object": "preset", "name": name, "deleted": True}
