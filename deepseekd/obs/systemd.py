"""systemd's sd_notify protocol, spoken directly (no libsystemd, no python-systemd).

The service manager passes an ``AF_UNIX`` datagram socket in ``NOTIFY_SOCKET``; a
notification is one datagram of newline-separated ``KEY=value`` assignments. Outside
systemd (``NOTIFY_SOCKET`` unset) every call is a no-op, so the daemon needs no branches.

Wiring (done in the app): ``n = Notifier.from_env()``; ``n.status(...)`` while loading and
warming; ``n.ready()`` once /readyz turns 200, then ``asyncio.create_task(n.watchdog_loop())``;
``n.stopping()`` when the drain begins; ``n.close()`` at exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("deepseekd.systemd")


class Notifier:
    """Sends sd_notify datagrams; never raises into the caller."""

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: str | None = None,
        watchdog_pid: str | None = None,
    ) -> None:
        """``address`` is ``NOTIFY_SOCKET`` as systemd sets it (``/path`` or ``@abstract``)."""
        self._address = _parse_address(address)
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None
        # Set while sends fail, so an unreachable manager yields one warning, not one per
        # watchdog ping; cleared by the next success, so a later outage is reported again.
        self._failing = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Notifier:
        """Build from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``."""
        return cls(
            env.get("NOTIFY_SOCKET") or None,
            watchdog_usec=env.get("WATCHDOG_USEC"),
            watchdog_pid=env.get("WATCHDOG_PID"),
        )

    @property
    def enabled(self) -> bool:
        """True when a notification socket is configured."""
        return self._address is not None

    # ------------------------------------------------------------------ messages

    def notify(self, **fields: str | int) -> bool:
        """Send one datagram of ``KEY=value`` lines; True when it was handed to the kernel."""
        if self._address is None or not fields:
            return False
        lines = []
        for key, value in fields.items():
            # A newline would end the assignment early and smuggle in another one.
            text = str(value).replace("\r", " ").replace("\n", " ")
            lines.append(f"{key}={text}")
        return self._send(self._address, "\n".join(lines).encode("utf-8"))

    def status(self, text: str) -> bool:
        """``STATUS=text``: the one-line state `systemctl status` shows."""
        return self.notify(STATUS=text)

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up finished (systemd starts the watchdog clock now)."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the drain began; systemd shows the unit as deactivating."""
        if status is None:
            return self.notify(STOPPING=1)
        return self.notify(STOPPING=1, STATUS=status)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping."""
        return self.notify(WATCHDOG=1)

    # ------------------------------------------------------------------ watchdog

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of ``WATCHDOG_USEC``), or None when not asked for.

        None also when ``WATCHDOG_PID`` names another process: the variables were inherited
        (say, by an engine worker) and the watchdog belongs to our parent.
        """
        if not self._watchdog_usec:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                log.warning("ignoring malformed WATCHDOG_PID", extra={"value": self._watchdog_pid})
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_USEC", extra={"value": self._watchdog_usec})
            return None
        if usec <= 0:
            return None
        # Half the timeout, as sd_watchdog_enabled(3) advises: one late tick is not fatal.
        return usec / 2 / 1_000_000

    async def watchdog_loop(self) -> None:
        """Ping every ``watchdog_interval()`` until cancelled; returns at once if disabled.

        Runs on the event loop on purpose: when the loop is stuck the pings stop, and
        systemd kills and restarts the daemon.
        """
        interval = self.watchdog_interval()
        if interval is None or not self.enabled:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ socket

    def close(self) -> None:
        """Close the socket; a later notification opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, address: bytes, payload: bytes) -> bool:
        try:
            if self._sock is None:
                # Non-blocking: a full queue at systemd's end must never stall the event
                # loop; CLOEXEC: engine workers must not inherit the descriptor.
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, address)
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "sd_notify failed; systemd may not see our state or pings",
                    extra={"notify_socket": _show(address), "error": str(exc)},
                )
                self._failing = True
            else:
                log.debug("sd_notify failed again", extra={"error": str(exc)})
            return False
        self._failing = False
        return True


def _parse_address(value: str | None) -> bytes | None:
    """``/path`` → the path; ``@name`` → the abstract ``\\0name``; anything else → None."""
    if not value:
        return None
    if value.startswith("/"):
        return os.fsencode(value)
    if value.startswith("@") and len(value) > 1:
        # Linux abstract namespace: a leading NUL instead of systemd's printable '@'.
        return b"\0" + os.fsencode(value[1:])
    # e.g. a vsock: address (systemd >= 253 in VMs), which this appliance never runs under.
    log.warning("unsupported NOTIFY_SOCKET; notifications disabled", extra={"notify_socket": value})
    return None


def _show(address: bytes) -> str:
    """The address as systemd writes it, for logs."""
    text = os.fsdecode(address)
    return "@" + text[1:] if text.startswith("\0") else text
