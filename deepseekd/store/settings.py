"""Settings changed at run time from the admin console, persisted so a restart keeps them."""

from __future__ import annotations

import json
from typing import Any, Callable

from sqlalchemy import select

from deepseekd.store.audit import AuditLog, Event
from deepseekd.store.accounts import Identity
from deepseekd.store.db import Database
from deepseekd.store.schema import RuntimeSetting


class SettingsStore:
    def __init__(self, db: Database, audit: AuditLog, clock: Callable[[], float]) -> None:
        self._db = db
        self._audit = audit
        self._now = clock

    async def load(self) -> dict[str, Any]:
        async with self._db.read() as s:
            rows = (await s.execute(select(RuntimeSetting))).scalars().all()
        return {r.key: json.loads(r.value) for r in rows}

    async def save(self, changes: dict[str, Any], by: Identity) -> None:
        """All changes in one transaction with their audit event."""
        now = self._now()
        async with self._db.write() as s:
            for key, value in changes.items():
                row = await s.get(RuntimeSetting, key)
                if row is None:
                    s.add(RuntimeSetting(key=key, value=json.dumps(value), updated_at=now,
                                         updated_by=by.name))
                else:
                    row.value, row.updated_at, row.updated_by = json.dumps(value), now, by.name
            await self._audit.append_in(s, Event(
                action="settings.change", actor=by.name, actor_id=by.user_id, role=by.role,
                detail=json.dumps(changes, sort_keys=True)[:512]))
