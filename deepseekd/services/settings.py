"""The few settings an admin may change while the daemon runs, and how each takes effect.

Their types, limits and descriptions are the config fields' own (``config.field_info``), so
the console cannot accept what the config file would refuse. Everything else needs the
config file and a restart: it is read before the model loads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from deepseekd.config import ConfigError, FieldInfo, Settings, field_info
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Invalid
from deepseekd.domain.identity import Identity
from deepseekd.services.audit import AuditLog
from deepseekd.services.usage import QuotaService
from deepseekd.store import settings as repo
from deepseekd.store.db import Database

RUNTIME_KEYS = ("quota.daily_requests", "history.retention_days", "obs.log_level")
FIELDS: dict[str, FieldInfo] = {k: field_info(k) for k in RUNTIME_KEYS}
LABELS: dict[str, tuple[str, str]] = {
    "quota.daily_requests": (
        "Daily requests per user",
        "How many questions a user may ask a day unless their own or their group's limit "
        "says otherwise; 0 stops everyone without a limit of their own.",
    ),
    "history.retention_days": (
        "Keep chat history for (days)",
        "Conversations without a new message for this many days are deleted for good "
        "(a directory group may keep its own); 0 keeps them forever.",
    ),
    "obs.log_level": (
        "Log detail",
        "How much the daemon writes to its log: DEBUG is the most, ERROR the least. "
        "Never chat content at any level.",
    ),
}
"""The console's name and one-line help for each setting (``FIELDS`` keeps the config's)."""


def describe_field(info: FieldInfo) -> dict[str, Any]:
    """A setting's type and limits as the API shows them."""
    if info.choices:
        return {"type": "choice", "choices": list(info.choices)}
    return {"type": "int", "min": info.min, "max": info.max}


class RuntimeSettings:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        audit: AuditLog,
        quota: QuotaService,
        clock: Callable[[], float],
    ) -> None:
        self._db = db
        self._audit = audit
        self._quota = quota
        self._now = clock
        self.values: dict[str, Any] = {k: _get(settings, k) for k in RUNTIME_KEYS}

    async def load(self) -> list[str]:
        """Apply what admins changed over the config file: at start (changes made before
        the last restart) and at every cluster sync (changes made on another replica).
        Returns the settings whose value changed."""
        changed = []
        for key, value in (await self._db.read("settings.load", repo.load)).items():
            if key in FIELDS and self.values.get(key) != value:
                self._apply(key, value)
                changed.append(key)
        return changed

    def _apply(self, key: str, value: Any) -> None:
        self.values[key] = value
        if key == "quota.daily_requests":
            self._quota.default_daily_requests = int(value)
        elif key == "obs.log_level":
            logging.getLogger().setLevel(str(value))

    @property
    def retention_days(self) -> int:
        return int(self.values["history.retention_days"])

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "key": key,
                "label": LABELS[key][0],
                "help": LABELS[key][1],
                "value": self.values[key],
                "description": info.doc,
                **describe_field(info),
            }
            for key, info in FIELDS.items()
        ]

    def _check(self, key: str, value: Any) -> Any:
        info = FIELDS.get(key)
        if info is None:
            raise Invalid(
                f"{key}: not a setting that can change at run time (allowed: {', '.join(FIELDS)})",
                field=key,
            )
        if info.type is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise Invalid(f"{key}: an integer from {info.min} to {info.max}", field=key)
        try:
            return info.check(value)
        except ConfigError:
            if info.choices:
                raise Invalid(f"{key}: one of {', '.join(info.choices)}", field=key) from None
            raise Invalid(f"{key}: an integer from {info.min} to {info.max}", field=key) from None

    async def update(self, changes: dict[str, Any], by: Identity) -> None:
        if not changes:
            raise Invalid("send at least one setting")
        checked = {k: self._check(k, v) for k, v in changes.items()}  # all or nothing
        now = self._now()
        await self._audit.write_with(
            "settings.change",
            Event.by(by, "settings.change", detail=_json(checked)),
            lambda s: repo.save(s, checked, now, by.name),
        )
        for key, value in checked.items():
            self._apply(key, value)


def _get(settings: Settings, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _json(changes: dict[str, Any]) -> str:
    return json.dumps(changes, sort_keys=True)[:512]
