"""The few settings an admin may change while the daemon runs, and how each takes effect.

Everything else needs the config file and a restart: it is read before the model loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from deepseekd.api.errors import APIError
from deepseekd.config import Settings
from deepseekd.store.accounts import Identity
from deepseekd.store.quota import QuotaService
from deepseekd.store.settings import SettingsStore

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Spec:
    key: str
    description: str
    type: str
    min: int | None = None
    max: int | None = None
    choices: tuple[str, ...] = ()


SPECS = (
    Spec("quota.daily_requests", "Default requests per user per day (users without their own "
         "limit).", "int", 0, 10_000_000),
    Spec("history.retention_days", "Conversations untouched this many days are deleted; 0 keeps "
         "them.", "int", 0, 36500),
    Spec("obs.log_level", "Log level of the daemon's JSON log.", "choice", choices=LOG_LEVELS),
)
BY_KEY = {s.key: s for s in SPECS}


class RuntimeSettings:
    def __init__(self, settings: Settings, store: SettingsStore, quota: QuotaService) -> None:
        self._store = store
        self._quota = quota
        self.values: dict[str, Any] = {
            "quota.daily_requests": settings.quota.daily_requests,
            "history.retention_days": settings.history.retention_days,
            "obs.log_level": settings.obs.log_level,
        }

    async def load(self) -> None:
        """Apply what admins changed before the last restart over the config file."""
        for key, value in (await self._store.load()).items():
            if key in BY_KEY:
                self._apply(key, value)

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
        out = []
        for s in SPECS:
            item: dict[str, Any] = {"key": s.key, "value": self.values[s.key],
                                    "description": s.description, "type": s.type}
            if s.type == "int":
                item.update(min=s.min, max=s.max)
            else:
                item["choices"] = list(s.choices)
            out.append(item)
        return out

    def _check(self, key: str, value: Any) -> Any:
        spec = BY_KEY.get(key)
        if spec is None:
            raise APIError(400, f"{key}: not a setting that can change at run time (allowed: "
                           f"{', '.join(BY_KEY)})", code="invalid_value", param=key)
        if spec.type == "int":
            if isinstance(value, bool) or not isinstance(value, int) or not (
                    spec.min <= value <= spec.max):  # type: ignore[operator]
                raise APIError(400, f"{key}: an integer from {spec.min} to {spec.max}",
                               code="invalid_value", param=key)
        elif value not in spec.choices:
            raise APIError(400, f"{key}: one of {', '.join(spec.choices)}", code="invalid_value",
                           param=key)
        return value

    async def update(self, changes: dict[str, Any], by: Identity) -> None:
        if not changes:
            raise APIError(400, "send at least one setting", code="invalid_value")
        checked = {k: self._check(k, v) for k, v in changes.items()}  # all or nothing
        await self._store.save(checked, by)
        for key, value in checked.items():
            self._apply(key, value)
