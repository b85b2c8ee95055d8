"""The registry of loaded LoRA adapters; each change commits with its audit event."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import select

from deepseekd.store.accounts import Identity
from deepseekd.store.audit import AuditLog, Event
from deepseekd.store.db import Database
from deepseekd.store.schema import LoraAdapter


@dataclass(frozen=True)
class AdapterRecord:
    name: str
    base_model: str
    sha256: str
    files: dict[str, dict[str, Any]]
    source: str
    rank: int
    loaded_at: float
    loaded_by: str | None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "base_model": self.base_model, "sha256": self.sha256,
                "files": self.files, "source": self.source, "rank": self.rank,
                "loaded_at": self.loaded_at, "loaded_by": self.loaded_by}


def _record(row: LoraAdapter) -> AdapterRecord:
    return AdapterRecord(row.name, row.base_model, row.sha256, json.loads(row.files), row.source,
                         row.rank, row.loaded_at, row.loaded_by)


class AdapterRegistry:
    def __init__(self, db: Database, audit: AuditLog, clock: Callable[[], float]) -> None:
        self._db = db
        self._audit = audit
        self._now = clock

    async def list(self) -> list[AdapterRecord]:
        async with self._db.read() as s:
            rows = (await s.execute(select(LoraAdapter).order_by(LoraAdapter.name))).scalars()
            return [_record(r) for r in rows]

    async def add(self, rec: AdapterRecord, by: Identity) -> AdapterRecord:
        """Record a loaded adapter (replacing one of the same name) with ``lora.load``."""
        async with self._db.write() as s:
            old = await s.get(LoraAdapter, rec.name)
            if old is not None:
                await s.delete(old)
                await s.flush()
            s.add(LoraAdapter(name=rec.name, base_model=rec.base_model, sha256=rec.sha256,
                              files=json.dumps(rec.files, sort_keys=True), source=rec.source,
                              rank=rec.rank, loaded_at=rec.loaded_at, loaded_by=rec.loaded_by))
            await self._audit.append_in(s, Event(
                action="lora.load", actor=by.name, actor_id=by.user_id, role=by.role,
                target=f"lora:{rec.name}", model=rec.base_model,
                detail=f"sha256={rec.sha256} rank={rec.rank} source={rec.source}"[:512]))
        return rec

    async def remove(self, name: str, by: Identity | None, *, reason: str = "") -> bool:
        """Forget an adapter with ``lora.unload``; False when it was not registered."""
        async with self._db.write() as s:
            row = await s.get(LoraAdapter, name)
            if row is None:
                return False
            await s.delete(row)
            await self._audit.append_in(s, Event(
                action="lora.unload", actor=by.name if by else None,
                actor_id=by.user_id if by else None, role=by.role if by else "service",
                target=f"lora:{name}", model=row.base_model,
                detail=(f"sha256={row.sha256}" + (f" {reason}" if reason else ""))[:512]))
        return True
