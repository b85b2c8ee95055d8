"""Notices to people outside the box's log: a JSON webhook and a syslog message at priority
alert. Used for break-glass starts and ends, which supervisors must hear of at once. A notice
that cannot be delivered is logged and counted, never retried forever: the audit log (and
the SIEM it is forwarded to) holds the record either way."""

from __future__ import annotations

import json
import logging
import logging.handlers
import socket
import ssl
from collections.abc import Callable
from typing import Any

import httpx

log = logging.getLogger("deepseekd.notify")
TIMEOUT_S = 10.0


class _AlertSyslog(logging.handlers.SysLogHandler):
    """Every notice at syslog priority "alert" (action must be taken immediately), and a
    failed send raised rather than printed to stderr."""

    def mapPriority(self, levelName: str) -> str:
        return "alert"

    def handleError(self, record: logging.LogRecord) -> None:
        raise  # inside emit's except: re-raises what failed


class Notifier:
    def __init__(
        self,
        url: str = "",
        ca_file: str = "",
        syslog: str = "",
        on_error: Callable[[str], None] = lambda _channel: None,
    ) -> None:
        self._url = url
        self._verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        self._syslog = syslog
        self.on_error = on_error

    @property
    def enabled(self) -> bool:
        return bool(self._url or self._syslog)

    async def send(self, subject: str, body: dict[str, Any]) -> None:
        """Tell every configured recipient; a failure of one does not stop the other."""
        if self._url:
            await self._webhook(subject, body)
        if self._syslog:
            self._to_syslog(subject, body)

    async def _webhook(self, subject: str, body: dict[str, Any]) -> None:
        try:
            async with httpx.AsyncClient(verify=self._verify, timeout=TIMEOUT_S) as client:
                r = await client.post(self._url, json={"subject": subject, **body})
                r.raise_for_status()
        except (httpx.HTTPError, OSError) as exc:
            self.on_error("webhook")
            log.warning("notice not delivered", extra={"channel": "webhook", "error": str(exc)})

    def _to_syslog(self, subject: str, body: dict[str, Any]) -> None:
        if self._syslog.startswith("unix://"):
            address: Any = self._syslog.removeprefix("unix://")
            kind = None
        else:
            host, _, port = self._syslog.removeprefix("udp://").rpartition(":")
            address, kind = (host, int(port)), socket.SOCK_DGRAM
        handler = None
        try:
            handler = _AlertSyslog(
                address, facility=logging.handlers.SysLogHandler.LOG_AUTH, socktype=kind
            )
            handler.ident = "deepseekd: "
            record = logging.LogRecord(
                "deepseekd.notify",
                logging.CRITICAL,
                __file__,
                0,
                f"{subject} {json.dumps(body, sort_keys=True)}",
                None,
                None,
            )
            handler.emit(record)
        except OSError as exc:
            self.on_error("syslog")
            log.warning("notice not delivered", extra={"channel": "syslog", "error": str(exc)})
        finally:
            if handler is not None:
                handler.close()
