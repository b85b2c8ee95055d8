"""Settings changed at run time from the admin console, persisted so a restart keeps them."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deepseekd.store.schema import RuntimeSetting


def load(s: Session) -> dict[str, Any]:
    return {r.key: json.loads(r.value) for r in s.execute(select(RuntimeSetting)).scalars()}


def save(s: Session, changes: dict[str, Any], now: float, by: str) -> None:
    for key, value in changes.items():
        row = s.get(RuntimeSetting, key)
        if row is None:
            s.add(RuntimeSetting(key=key, value=json.dumps(value), updated_at=now, updated_by=by))
        else:
            row.value, row.updated_at, row.updated_by = json.dumps(value), now, by
