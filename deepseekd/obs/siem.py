"""What the SIEM receives, and how it gets there: the record of one audit event as RFC 5424
syslog and as a JSON line, and the transports that carry them.

A transport's ``send(events)`` returns only once the receiver has acknowledged the whole
batch and raises SinkError otherwise; the forwarder (services/siem.py) moves its cursor
only after a return. What acknowledged means, by transport:

* syslog over TCP or TLS (octet-counted frames, RFC 6587 / RFC 5425): one connection per
  batch, ended the lingering way. After the last frame we close our side and wait for the
  receiver to close its own: over TLS, its close_notify answering ours, which it sends only
  after reading every record before ours (a receiver that dies sends none); then, as over
  plain TCP, our FIN, the receiver's, and our kernel reporting every byte we sent as
  acknowledged by the receiver's TCP. A receiver that closed cleanly after that has read
  every byte: had it closed with bytes unread, or before they reached it, its kernel would
  have answered with a reset. Plain syslog has no application-level acknowledgement; this
  is the most it can give (over plain TCP, a receiver that read a batch and then died looks
  the same as one that handled it: TLS tells the two apart).
* syslog over UDP or a unix datagram socket: handed to the kernel (UDP gives no more; a
  unix socket refuses when nobody listens).
* a JSON-lines file: appended and fsynced.
* HTTP: a 2xx answer to the POST of the batch.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import ssl
import struct
import termios
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from deepseekd.config import SYSLOG_URL
from deepseekd.domain.audit import CHAIN_FIELDS

SINKS = ("syslog", "jsonl", "http")
"""The sinks, as named in the cursor table and the metrics' ``sink`` label."""
RECORD_FIELDS = (*CHAIN_FIELDS, "prev_hash", "hash")
"""Every field of the chain, plus the links: what each exported record carries."""
SD_ID = "deepseekd@32473"
"""The structured-data element of a syslog line. 32473 is the enterprise number RFC 5612
reserves for documentation: deepseekd has none registered with IANA."""
SD_PARAMS = ("id", "hash", "prev_hash", "action", "outcome")
SEVERITY = {"ok": 6, "error": 3}
"""Syslog severity by outcome: informational, error; any other outcome (denied, locked,
stopped) is a notice (5)."""
ACK_POLL_S = 0.002

Event = Mapping[str, Any]


class SinkError(Exception):
    """The receiver did not acknowledge the batch: none of it may be taken as delivered."""


def record(ev: Event) -> dict[str, Any]:
    return {k: ev[k] for k in RECORD_FIELDS}


def json_record(ev: Event) -> bytes:
    """The record as one line of ASCII JSON (non-ASCII escaped, keys sorted). Parsed, it
    gives back the values the chain hash covers."""
    return json.dumps(record(ev), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def json_lines(events: Sequence[Event]) -> bytes:
    return b"".join(json_record(ev) + b"\n" for ev in events)


def _token(text: str, limit: int) -> str:
    """A syslog header field: printable ASCII without spaces, at most ``limit`` long."""
    return "".join(c if "!" <= c <= "~" else "_" for c in text)[:limit] or "-"


def _sd_value(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


@dataclass(frozen=True)
class SyslogFormat:
    """RFC 5424 lines: ``<PRI>1 TIMESTAMP HOST APP PID ACTION [deepseekd@32473 id=.. hash=..
    prev_hash=.. action=.. outcome=..] {JSON record}``. The message is ASCII JSON, so it
    carries no byte-order mark (RFC 5424 MSG-ANY)."""

    app_name: str = "deepseekd"
    facility: int = 13
    hostname: str = field(default_factory=lambda: _token(socket.gethostname(), 255))
    procid: str = field(default_factory=lambda: str(os.getpid()))

    def message(self, ev: Event) -> bytes:
        pri = self.facility * 8 + SEVERITY.get(ev["outcome"], 5)
        stamp = datetime.fromtimestamp(ev["at"], UTC).isoformat(timespec="microseconds")
        params = "".join(f' {k}="{_sd_value(ev[k])}"' for k in SD_PARAMS if ev[k] is not None)
        head = (
            f"<{pri}>1 {stamp.replace('+00:00', 'Z')} {self.hostname} {_token(self.app_name, 48)}"
            f" {self.procid} {_token(ev['action'], 32)} [{SD_ID}{params}] "
        )
        return head.encode() + json_record(ev)

    def frame(self, ev: Event) -> bytes:
        """Octet counting (RFC 6587 3.4.1, RFC 5425 4.3): ``LENGTH SP MESSAGE``."""
        msg = self.message(ev)
        return b"%d " % len(msg) + msg


class Transport(Protocol):
    async def send(self, events: Sequence[Event]) -> None:
        """Deliver ``events`` in order; return once acknowledged, else raise SinkError."""

    async def close(self) -> None: ...


def syslog_transport(
    url: str, fmt: SyslogFormat, tls: ssl.SSLContext | None, timeout_s: float
) -> Transport:
    """The transport for a ``[siem] syslog_url`` (checked by the settings loader)."""
    m = SYSLOG_URL.fullmatch(url)
    if m is None:
        raise ValueError(f"not a syslog URL: {url!r}")
    if m["path"]:
        return SyslogDatagram(m["path"], None, fmt, timeout_s)
    host, port = m["host"].strip("[]"), int(m["port"])
    if m["scheme"] == "udp":
        return SyslogDatagram(host, port, fmt, timeout_s)
    return SyslogStream(host, port, fmt, tls if m["scheme"] == "tls" else None, timeout_s)


class SyslogStream:
    """tcp:// and tls://: one connection per batch, acknowledged by a lingering close."""

    def __init__(
        self, host: str, port: int, fmt: SyslogFormat, tls: ssl.SSLContext | None, timeout_s: float
    ) -> None:
        self._address = (host, port)
        self._fmt = fmt
        self._tls = tls
        self._timeout_s = timeout_s

    async def send(self, events: Sequence[Event]) -> None:
        data = b"".join(self._fmt.frame(ev) for ev in events)
        conn = Connection(self._address, self._tls, self._timeout_s)
        try:
            await asyncio.to_thread(conn.deliver, data)
        except asyncio.CancelledError:
            conn.abort()  # wakes the thread; the batch counts as not sent
            raise

    async def close(self) -> None:
        return None


class Connection:
    """One batch over one TCP (or TLS) connection, in a worker thread, within one deadline."""

    def __init__(
        self, address: tuple[str, int], tls: ssl.SSLContext | None, timeout_s: float
    ) -> None:
        self._address = address
        self._tls = tls
        self._timeout_s = timeout_s
        self._sock: socket.socket | None = None

    def deliver(self, data: bytes) -> None:
        where = f"{self._address[0]}:{self._address[1]}"
        deadline = time.monotonic() + self._timeout_s
        try:
            self._sock = socket.create_connection(self._address, timeout=self._timeout_s)
        except OSError as exc:
            raise SinkError(f"cannot connect to {where}: {exc}") from None
        try:
            self._exchange(data, deadline)
        except TimeoutError:
            raise SinkError(
                f"{where}: not acknowledged within {self._timeout_s:g} s (the receiver must "
                "close the connection when we close ours)"
            ) from None
        except OSError as exc:  # ssl.SSLError is one
            raise SinkError(f"{where}: {exc}") from None
        finally:
            self._sock.close()

    def abort(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _exchange(self, data: bytes, deadline: float) -> None:
        assert self._sock is not None
        self._sock.settimeout(_left(deadline))  # the handshake and sendall: one deadline
        if self._tls is not None:
            self._sock = tls = self._tls.wrap_socket(self._sock, server_hostname=self._address[0])
            tls.sendall(data)
            tls.settimeout(_left(deadline))
            # Our close_notify, then the receiver's: it read everything up to ours. A
            # receiver that dies sends none (SSLEOFError, or a reset): not acknowledged.
            tls.unwrap()
        else:
            self._sock.sendall(data)
        self._sock.shutdown(socket.SHUT_WR)
        _read_to_eof(self._sock, deadline)
        _wait_acknowledged(self._sock, deadline)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _read_to_eof(sock: socket.socket, deadline: float) -> None:
    """Until the receiver closes its side (what it sends meanwhile is ignored); a reset is
    an OSError."""
    while True:
        sock.settimeout(_left(deadline))
        if not sock.recv(4096):
            return


def _wait_acknowledged(sock: socket.socket, deadline: float) -> None:
    """Until the receiver's TCP has acknowledged every byte we sent (Linux SIOCOUTQ: bytes
    not yet acknowledged) with no error on the socket."""
    while True:
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        if struct.unpack("i", out)[0] == 0:
            return
        _left(deadline)
        time.sleep(ACK_POLL_S)


class SyslogDatagram:
    """udp:// (``port`` set) and unix:// (``port`` None): one datagram per event, unframed
    (RFC 5426)."""

    def __init__(self, host: str, port: int | None, fmt: SyslogFormat, timeout_s: float) -> None:
        self._host = host
        self._port = port
        self._fmt = fmt
        self._timeout_s = timeout_s

    async def send(self, events: Sequence[Event]) -> None:
        await asyncio.to_thread(self._send_all, [self._fmt.message(ev) for ev in events])

    def _send_all(self, messages: list[bytes]) -> None:
        where = self._host if self._port is None else f"{self._host}:{self._port}"
        try:
            address: Any = self._host
            family = socket.AF_UNIX
            if self._port is not None:
                info = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)
                family, address = info[0][0], info[0][4]
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.settimeout(self._timeout_s)
                for msg in messages:
                    sock.sendto(msg, address)
        except OSError as exc:
            raise SinkError(f"{where}: {exc}") from None

    async def close(self) -> None:
        return None


class JsonlFile:
    """One JSON line per event, appended and fsynced; the file is opened per batch, so a
    rotation (rename) is followed. A failed write is cut off again, so no torn line stays."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    async def send(self, events: Sequence[Event]) -> None:
        await asyncio.to_thread(self._append, json_lines(events))

    def _append(self, data: bytes) -> None:
        try:
            created = not self._path.exists()
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                start = os.fstat(fd).st_size
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, start)
                    raise
            finally:
                os.close(fd)
            if created:  # the new name is durable too
                dirfd = os.open(self._path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dirfd)
                finally:
                    os.close(dirfd)
        except OSError as exc:
            raise SinkError(f"{self._path}: {exc.strerror or exc}") from None

    async def close(self) -> None:
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class HttpJsonl:
    """A POST of the batch as JSON lines (``application/x-ndjson``); a 2xx answer
    acknowledges it. ``tls``: the client context (CA, and a client certificate for mTLS)."""

    def __init__(self, url: str, tls: ssl.SSLContext | None, timeout_s: float) -> None:
        self._url = url
        self._tls = tls
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    async def send(self, events: Sequence[Event]) -> None:
        if self._client is None:
            verify: ssl.SSLContext | bool = self._tls if self._tls is not None else True
            self._client = httpx.AsyncClient(verify=verify, timeout=self._timeout_s)
        try:
            r = await self._client.post(
                self._url,
                content=json_lines(events),
                headers={"Content-Type": "application/x-ndjson"},
            )
        except (httpx.HTTPError, OSError) as exc:
            raise SinkError(f"{self._url}: {type(exc).__name__}: {exc}") from None
        if not r.is_success:
            raise SinkError(f"{self._url}: HTTP {r.status_code}")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
