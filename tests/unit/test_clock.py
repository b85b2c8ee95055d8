"""Is the clock synchronised (deepseekd.security.clock)? The kernel's answer to
adjtimex(2): its return value and the filled ``struct timex`` (64-bit Linux layout)."""

from __future__ import annotations

import ctypes
import errno
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deepseekd.security import clock
from deepseekd.security.clock import STA_UNSYNC, TIME_ERROR, ClockState, parse_timex

TIME_OK = 0
TIME_INS = 1  # a leap second will be inserted at midnight: still synchronised
STA_PLL = 0x0001


def timex(maxerror_us: int, esterror_us: int, status: int) -> bytes:
    """A ``struct timex`` as adjtimex fills it (208 bytes on x86-64 and aarch64)."""
    buf = bytearray(208)
    struct.pack_into("q", buf, 24, maxerror_us)
    struct.pack_into("q", buf, 32, esterror_us)
    struct.pack_into("i", buf, 40, status)
    return bytes(buf)


def test_a_disciplined_clock_is_synchronised() -> None:
    state = parse_timex(TIME_OK, timex(maxerror_us=12_500, esterror_us=250, status=STA_PLL))
    assert state == ClockState(True, 0.0125, 0.00025)
    assert state.reason == ""


def test_a_pending_leap_second_is_still_synchronised() -> None:
    assert parse_timex(TIME_INS, timex(8_000, 100, STA_PLL)).synchronised is True


def test_time_error_is_not_synchronised() -> None:
    """What an undisciplined clock answers: TIME_ERROR, and the kernel's 16 s max error."""
    assert TIME_ERROR == 5
    state = parse_timex(TIME_ERROR, timex(16_000_000, 16_000_000, STA_UNSYNC))
    assert state == ClockState(False, 16.0, 16.0)
    assert parse_timex(TIME_ERROR, timex(1_000, 10, 0)).synchronised is False


def test_the_unsync_status_bit_is_not_synchronised() -> None:
    assert STA_UNSYNC == 0x40
    state = parse_timex(TIME_OK, timex(500_000, 1_000, STA_UNSYNC | STA_PLL))
    assert state.synchronised is False
    assert (state.max_error_s, state.est_error_s) == (0.5, 0.001)


def test_the_fields_are_read_at_their_own_offsets() -> None:
    """Neighbouring fields (freq before maxerror, constant after status) are not read."""
    buf = bytearray(timex(2_000_000, 3_000, 0))
    struct.pack_into("q", buf, 16, -1)  # freq
    struct.pack_into("q", buf, 48, -1)  # constant
    assert parse_timex(TIME_OK, bytes(buf)) == ClockState(True, 2.0, 0.003)


def test_this_box_answers() -> None:
    """Containers usually run unsynchronised (TIME_ERROR); a seccomp filter may refuse."""
    state = clock.clock_state()
    assert state.synchronised in (True, False, None)
    if state.synchronised is None:
        assert state.reason
    else:
        assert state.reason == ""
        assert state.max_error_s is not None and state.max_error_s >= 0
        assert state.est_error_s is not None and state.est_error_s >= 0


# --------------------------------------------------------------------------- the C library


class Libc:
    """The C library, with an adjtimex that answers as the kernel would."""

    def __init__(self, ret: int, filled: bytes = b"") -> None:
        self.ret, self.filled, self.calls = ret, filled, 0

    def adjtimex(self, buf: Any) -> int:
        self.calls += 1
        assert bytes(buf.raw[:4]) == b"\0\0\0\0"  # modes = 0: read, never set
        ctypes.memmove(buf, self.filled, len(self.filled))
        return self.ret


def with_libc(monkeypatch: pytest.MonkeyPatch, libc: object, *, err: int = 0,
              name: str | None = "libc.so.6") -> None:
    fake = SimpleNamespace(
        util=SimpleNamespace(find_library=lambda _: name),
        CDLL=lambda _name, use_errno=False: libc,
        create_string_buffer=ctypes.create_string_buffer,
        get_errno=lambda: err,
    )
    monkeypatch.setattr(clock, "ctypes", fake)


def test_the_kernels_answer_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = Libc(TIME_OK, timex(40_000, 2_000, STA_PLL))
    with_libc(monkeypatch, libc)
    assert clock.clock_state() == ClockState(True, 0.04, 0.002)
    assert libc.calls == 1


def test_a_refused_adjtimex_is_unknown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """systemd's SystemCallFilter=~@privileged can refuse adjtimex with EPERM."""
    monkeypatch.setattr(clock, "TIMESYNCD_MARK", tmp_path / "synchronized")
    with_libc(monkeypatch, Libc(-1), err=errno.EPERM)
    assert clock.clock_state() == ClockState(
        None, reason="adjtimex refused: Operation not permitted")
    # Under the unit the doctor still learns from systemd-timesyncd's mark.
    (tmp_path / "synchronized").touch()
    assert clock.clock_state() == ClockState(
        True, reason="adjtimex refused: Operation not permitted; systemd-timesyncd has "
        "synchronised it")


def test_no_adjtimex_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    with_libc(monkeypatch, object())
    assert clock.clock_state() == ClockState(None, reason="no adjtimex on this system")


def test_no_c_library_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    with_libc(monkeypatch, Libc(TIME_OK), name=None)
    assert clock.clock_state() == ClockState(None, reason="no C library found")


def test_only_64_bit_layouts_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock, "struct", SimpleNamespace(calcsize=lambda _: 4))
    assert clock.clock_state() == ClockState(None, reason="only read on 64-bit Linux")
