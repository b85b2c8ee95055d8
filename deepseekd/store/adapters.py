"""The registry of loaded LoRA adapters (reloaded into the engine when the daemon starts)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deepseekd.store.schema import LoraAdapter


def all_adapters(s: Session) -> list[dict[str, Any]]:
    rows = s.execute(select(LoraAdapter).order_by(LoraAdapter.name)).scalars()
    return [
        {
            "name": r.name,
            "base_model": r.base_model,
            "sha256": r.sha256,
            "files": json.loads(r.files),
            "source": r.source,
            "rank": r.rank,
            "loaded_at": r.loaded_at,
            "loaded_by": r.loaded_by,
        }
        for r in rows
    ]


def put(
    s: Session,
    *,
    name: str,
    base_model: str,
    sha256: str,
    files: dict[str, Any],
    source: str,
    rank: int,
    loaded_at: float,
    loaded_by: str | None,
) -> None:
    """Record an adapter, replacing one of the same name."""
    old = s.get(LoraAdapter, name)
    if old is not None:
        s.delete(old)
        s.flush()
    s.add(
        LoraAdapter(
            name=name,
            base_model=base_model,
            sha256=sha256,
            files=json.dumps(files, sort_keys=True),
            source=source,
            rank=rank,
            loaded_at=loaded_at,
            loaded_by=loaded_by,
        )
    )


def remove(s: Session, name: str) -> tuple[str, str] | None:
    """Forget an adapter; its (base model, sha256), or None when it was not registered."""
    row = s.get(LoraAdapter, name)
    if row is None:
        return None
    s.delete(row)
    return row.base_model, row.sha256
