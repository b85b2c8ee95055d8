"""Shared system-prompt presets: one row per name (a change replaces the text)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from deepseekd.store.schema import Preset


def all_presets(s: Session) -> list[Preset]:
    """Every preset, by name."""
    return list(s.execute(select(Preset).order_by(Preset.name)).scalars())


def by_name(s: Session, name: str) -> Preset | None:
    return s.execute(select(Preset).where(Preset.name == name)).scalar_one_or_none()


def put(s: Session, name: str, text: str, now: float, by: str | None) -> tuple[Preset, bool]:
    """Create ``name`` or replace its text; (the row, whether it was created)."""
    row = by_name(s, name)
    created = row is None
    if row is None:
        row = Preset(name=name, text=text, updated_at=now, updated_by=by)
        s.add(row)
    else:
        row.text, row.updated_at, row.updated_by = text, now, by
    s.flush()
    return row, created


def delete(s: Session, name: str) -> bool:
    """Remove ``name``; False when there was none."""
    row = by_name(s, name)
    if row is None:
        return False
    s.delete(row)
    s.flush()
    return True
