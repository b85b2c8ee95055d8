"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepseekd.obs.systemd import Notifier


def receive_all(sock: socket.socket) -> list[bytes]:
    """Every datagram queued on ``sock`` right now."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound socket at a filesystem path, and the NOTIFY_SOCKET value naming it."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    yield sock, str(path)
    sock.close()


def test_messages_are_the_exact_datagrams(manager: tuple[socket.socket, str]) -> None:
    sock, address = manager
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert n.enabled
    assert n.status("loading model")
    assert n.ready()
    assert n.ready("serving")
    assert n.watchdog()
    assert n.stopping()
    assert n.stopping("draining 3 requests")
    assert n.notify(EXTEND_TIMEOUT_USEC=30_000_000)
    n.close()
    assert receive_all(sock) == [
        b"STATUS=loading model",
        b"READY=1",
        b"READY=1\nSTATUS=serving",
        b"WATCHDOG=1",
        b"STOPPING=1",
        b"STOPPING=1\nSTATUS=draining 3 requests",
        b"EXTEND_TIMEOUT_USEC=30000000",
    ]


def test_newline_in_a_value_cannot_add_an_assignment(manager: tuple[socket.socket, str]) -> None:
    sock, address = manager
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    n.status("line one\nREADY=1")
    n.close()
    assert receive_all(sock) == [b"STATUS=line one READY=1"]


def test_abstract_socket() -> None:
    name = f"deepseekd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)  # what systemd means by "@name"
    sock.setblocking(False)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.enabled
        assert n.ready("up")
        assert n.watchdog()
        n.close()
        assert receive_all(sock) == [b"READY=1\nSTATUS=up", b"WATCHDOG=1"]
    finally:
        sock.close()


def test_socket_is_reopened_after_close(manager: tuple[socket.socket, str]) -> None:
    sock, address = manager
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    n.status("a")
    n.close()
    n.close()  # idempotent
    n.status("b")
    n.close()
    assert receive_all(sock) == [b"STATUS=a", b"STATUS=b"]


def test_without_notify_socket_everything_is_a_no_op() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.status("x") is False
    assert n.ready() is False
    assert n.stopping() is False
    assert n.watchdog() is False
    assert n.notify(READY=1) is False
    n.close()
    assert not Notifier.from_env({"NOTIFY_SOCKET": ""}).enabled


def test_default_environment_is_os_environ(monkeypatch: pytest.MonkeyPatch,
                                           manager: tuple[socket.socket, str]) -> None:
    sock, address = manager
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    n = Notifier.from_env()
    n.ready()
    n.close()
    assert receive_all(sock) == [b"READY=1"]


def test_unsupported_address_disables(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="deepseekd.systemd"):
        n = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert n.ready() is False
    assert "unsupported NOTIFY_SOCKET" in caplog.text


def test_missing_socket_path_warns_once_and_never_raises(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "no-such-socket")})
    assert n.enabled
    with caplog.at_level(logging.DEBUG, logger="deepseekd.systemd"):
        assert n.status("x") is False
        assert n.ready() is False
        assert n.watchdog() is False
        assert n.stopping() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "sd_notify failed" in warnings[0].getMessage()
    n.close()


def test_a_later_outage_is_reported_again(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "notify"
    n = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    with caplog.at_level(logging.WARNING, logger="deepseekd.systemd"):
        n.watchdog()  # nobody listening yet
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        assert n.watchdog()
        sock.close()
        path.unlink()
        n.watchdog()
        n.watchdog()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    n.close()


def test_socket_without_listener_never_raises(tmp_path: Path) -> None:
    # The file exists but nobody reads: ECONNREFUSED, still no exception.
    path = tmp_path / "dead"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()
    n = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    assert n.ready() is False
    n.close()


# ---------------------------------------------------------------------- watchdog

def test_watchdog_interval_is_half_the_timeout() -> None:
    assert Notifier.from_env({"WATCHDOG_USEC": "2000000"}).watchdog_interval() == 1.0
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(env).watchdog_interval() == 1.0


def test_watchdog_for_another_pid_is_not_ours() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(env).watchdog_interval() is None


@pytest.mark.parametrize("env", [
    {},
    {"WATCHDOG_USEC": ""},
    {"WATCHDOG_USEC": "0"},
    {"WATCHDOG_USEC": "-5"},
    {"WATCHDOG_USEC": "soon"},
    {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "me"},
])
def test_watchdog_interval_none_when_not_asked(env: dict[str, str]) -> None:
    assert Notifier.from_env(env).watchdog_interval() is None


async def test_watchdog_loop_pings_until_cancelled(manager: tuple[socket.socket, str]) -> None:
    sock, address = manager
    n = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000",
                           "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_interval() == pytest.approx(0.1)
    task = asyncio.create_task(n.watchdog_loop())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    n.close()
    got = receive_all(sock)
    assert len(got) >= 2
    assert set(got) == {b"WATCHDOG=1"}


async def test_watchdog_loop_returns_when_disabled(manager: tuple[socket.socket, str]) -> None:
    sock, address = manager
    # No WATCHDOG_USEC: nothing to do.
    await asyncio.wait_for(Notifier.from_env({"NOTIFY_SOCKET": address}).watchdog_loop(), 1)
    # No socket: nowhere to send.
    await asyncio.wait_for(Notifier.from_env({"WATCHDOG_USEC": "200000"}).watchdog_loop(), 1)
    assert receive_all(sock) == []
