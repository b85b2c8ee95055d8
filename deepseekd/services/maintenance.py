"""Periodic upkeep: break-glass expiry, the fine-tuning gauges, the directory recheck
(``auth.directory_recheck_minutes``), retention purge (daily), the audit head written to the
log (an anchor outside the database), and automatic master key rotation when the key is
old enough. The daemon calls ``tick`` once a minute."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from deepseekd.domain.errors import Conflict
from deepseekd.obs.logs import anchor_logger

if TYPE_CHECKING:
    from deepseekd.services.container import Services

log = logging.getLogger("deepseekd")


async def log_anchor(svc: Services) -> None:
    """The audit chain's head, to the log whatever its level (an anchor outside the
    database): ``deepseekd audit verify --expect-head ID:HASH`` checks a chain against it."""
    seq, digest = await svc.audit.head()
    anchor_logger().info(
        "audit head", extra={"audit_seq": seq, "audit_hash": digest, "anchor": f"{seq}:{digest}"}
    )


TICK_S = 60.0


class Maintenance:
    def __init__(self, services: Services) -> None:
        self._svc = services
        self._last: dict[str, float] = {}

    def _due(self, what: str, every_s: float, now: float) -> bool:
        if now - self._last.get(what, float("-inf")) < every_s:
            return False
        self._last[what] = now
        return True

    async def tick(self, now: float | None = None) -> None:
        svc, settings = self._svc, self._svc.settings
        now = time.monotonic() if now is None else now
        directory = svc.auth.directory
        if directory.rechecks and self._due(
            "directory", settings.auth.directory_recheck_minutes * 60, now
        ):
            disabled = await directory.recheck()
            if disabled:
                log.info("directory recheck", extra={"disabled": disabled})
        # Break-glass past its time: its access already ended; this records the end,
        # tells supervisors and keeps the active/overdue gauges current.
        await svc.breakglass.expire_due()
        for field, value in (await svc.finetune_jobs.gauges()).items():
            svc.metrics.finetune.labels(field).set(value)
        if self._due("purge", 86400, now):
            own = await directory.retention_overrides()
            purged = await svc.history.purge(svc.runtime.retention_days, own)
            if purged:
                log.info("retention purge", extra={"conversations": purged})
            await svc.auth.prune()  # old failed attempts and ended sessions
        if self._due("head", settings.audit.head_log_interval_s, now):
            await log_anchor(svc)
        if settings.keys.rotation_days and os.environ.get("CREDENTIALS_DIRECTORY"):
            if self._due("rotation-off", float("inf"), now):
                log.warning(
                    "automatic master key rotation is off: the master key comes from "
                    "systemd credentials (read-only); rotate on the host"
                )
        elif (
            settings.keys.rotation_days
            and self._due("rotation", 3600, now)
            and await svc.keys.current_key_age() >= settings.keys.rotation_days * 86400
        ):
            try:
                await svc.keys.rotate(None, automatic=True)
            except Conflict as exc:  # replicas without the new key: the console shows it due
                log.warning("automatic master key rotation waits", extra={"reason": exc.message})
