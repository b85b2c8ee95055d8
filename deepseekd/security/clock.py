"""Is the system clock synchronised? TOTP codes are accepted within one 30 s step either
side (``totp.WINDOW``), so a clock that drifts by more rejects every admin's code.

The box may not reach the internet, so nothing here asks a time server: the kernel knows
whether NTP (chrony, systemd-timesyncd, ntpd) disciplines the clock and how large its
error may be. ``adjtimex(2)`` with ``modes = 0`` only reads that state (no privilege
needed; a seccomp filter such as systemd's ``~@privileged`` may still refuse it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass
from pathlib import Path

TIME_ERROR = 5
"""adjtimex's return value when the clock is not synchronised."""
STA_UNSYNC = 0x0040
_TIMEX_SIZE = 512  # struct timex is 208 bytes on x86-64 and aarch64; room to spare
_MAXERROR = 24  # offsets in struct timex (64-bit Linux): modes, pad, offset, freq, maxerror
_ESTERROR = 32
_STATUS = 40
TIMESYNCD_MARK = Path("/run/systemd/timesync/synchronized")
"""systemd-timesyncd touches this file each time it synchronises the clock."""


@dataclass(frozen=True)
class ClockState:
    synchronised: bool | None
    """None: the kernel would not say (no adjtimex here, or refused)."""
    max_error_s: float | None = None
    est_error_s: float | None = None
    reason: str = ""


def parse_timex(ret: int, buf: bytes) -> ClockState:
    """The state from adjtimex's return value and the filled ``struct timex``."""
    (maxerror,) = struct.unpack_from("q", buf, _MAXERROR)
    (esterror,) = struct.unpack_from("q", buf, _ESTERROR)
    (status,) = struct.unpack_from("i", buf, _STATUS)
    synced = ret != TIME_ERROR and not status & STA_UNSYNC
    return ClockState(synced, maxerror / 1e6, esterror / 1e6)


def clock_state() -> ClockState:
    if struct.calcsize("P") != 8:
        return ClockState(None, reason="only read on 64-bit Linux")
    name = ctypes.util.find_library("c")
    if not name:
        return ClockState(None, reason="no C library found")
    libc = ctypes.CDLL(name, use_errno=True)
    if not hasattr(libc, "adjtimex"):
        return ClockState(None, reason="no adjtimex on this system")
    buf = ctypes.create_string_buffer(_TIMEX_SIZE)  # modes = 0: read only
    ret = libc.adjtimex(buf)
    if ret < 0:  # e.g. under the unit's SystemCallFilter=~@privileged (adjtimex is @clock)
        refused = f"adjtimex refused: {os.strerror(ctypes.get_errno())}"
        if TIMESYNCD_MARK.exists():
            return ClockState(True, reason=f"{refused}; systemd-timesyncd has synchronised it")
        return ClockState(None, reason=refused)
    return parse_timex(ret, buf.raw)
