"""SIEM receivers for the audit forwarder's tests, each a real server on loopback.

* ``SyslogReceiver``: RFC 5425 syslog over TLS (or plain TCP): octet-counted RFC 5424 frames
  parsed the moment they arrive, each connection's records kept in arrival order; it closes a
  connection when the sender closes its side, as rsyslog does. ``kill_after`` makes it die
  the way a process does, in the middle of a batch (bytes it has not read are lost: the
  kernel answers them with a reset); ``pause_from`` makes it stop reading new connections
  (so it never acknowledges them).
* ``DatagramReceiver``: one RFC 5424 message per UDP or unix datagram.
* ``HttpReceiver``: an aiohttp server taking POSTed JSON lines over TLS, requiring a client
  certificate (mTLS) from the test CA.
* ``parse_message``: a strict parser of one RFC 5424 message with one SD element.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.process import free_port

FRAME = re.compile(rb"([1-9][0-9]{0,6}) ")
HEADER = re.compile(r"<([0-9]{1,3})>1 (\S+) (\S{1,255}) (\S{1,48}) (\S{1,128}) (\S{1,32}) ")


@dataclass
class Message:
    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd_id: str
    sd: dict[str, str]
    record: dict[str, Any]


def parse_message(raw: bytes) -> Message:
    """One RFC 5424 message whose MSG is a JSON record; AssertionError if malformed."""
    text = raw.decode("utf-8")
    m = HEADER.match(text)
    assert m is not None, f"not an RFC 5424 header: {text[:120]!r}"
    sd_id, sd, rest = _structured_data(text[m.end():])
    assert rest.startswith(" "), f"no SP after the structured data: {rest[:40]!r}"
    msg = rest[1:]
    assert msg.isascii() and "\n" not in msg, "the MSG must be one line of ASCII JSON"
    return Message(int(m[1]), m[2], m[3], m[4], m[5], m[6], sd_id, sd, json.loads(msg))


def _structured_data(text: str) -> tuple[str, dict[str, str], str]:
    """``[ID name="value" ...]`` with RFC 5424's escapes (\\" \\\\ \\]); the rest after it."""
    assert text.startswith("["), f"no SD element: {text[:40]!r}"
    end_id = min(i for i in (text.find(" "), text.find("]")) if i > 0)
    sd_id, i, params = text[1:end_id], end_id, {}
    while text[i] == " ":
        eq = text.index("=", i)
        name = text[i + 1:eq]
        assert text[eq + 1] == '"', f"SD value of {name} not quoted"
        j, value = eq + 2, []
        while text[j] != '"':
            if text[j] == "\\" and text[j + 1] in '"\\]':
                j += 1
            value.append(text[j])
            j += 1
        params[name] = "".join(value)
        i = j + 1
    assert text[i] == "]", f"SD element not closed: {text[i:i + 40]!r}"
    return sd_id, params, text[i + 1:]


class SyslogReceiver:
    """``await r.start()`` (again after ``r.kill()``: the same port); ``r.connections``: the
    records of each connection, in order; ``r.records``: all of them."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.port = 0
        self.connections: list[list[Message]] = []
        self.errors: list[str] = []
        self.kill_after: int | None = None
        """Die when this many records were received in all."""
        self.pause_from: int | None = None
        """Connections from this index on (0-based) are never read, so never acknowledged."""
        self.paused = 0
        self.dead = True
        self.life = 0
        """Which life of the receiver (each kill ends one): a connection accepted in an
        earlier life died with it, even if its handshake ends later."""
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()

    @property
    def records(self) -> list[Message]:
        return [m for conn in self.connections for m in conn]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _SyslogConnection(self), "127.0.0.1", self.port, ssl=self.tls,
            reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self.dead = False

    def kill(self) -> None:
        """Die as a process does: stop listening, drop every connection at once."""
        self.dead = True
        self.life += 1
        if self._server is not None:
            self._server.close()
        for transport in list(self._transports):
            transport.abort()

    async def stop(self) -> None:
        self.kill()
        if self._server is not None:
            await self._server.wait_closed()


class _SyslogConnection(asyncio.Protocol):
    def __init__(self, receiver: SyslogReceiver) -> None:
        self.r = receiver
        self.life = receiver.life
        self.buf = b""
        self.records: list[Message] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.life != self.r.life:  # accepted before the receiver died
            transport.abort()
            return
        self.r._transports.add(transport)
        index = len(self.r.connections)
        self.r.connections.append(self.records)
        if self.r.pause_from is not None and index >= self.r.pause_from:
            transport.pause_reading()
            self.r.paused += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.life == self.r.life:
            m = FRAME.match(self.buf)
            if m is None:
                if len(self.buf) > 8 or (self.buf and not self.buf[:1].isdigit()):
                    self.r.errors.append(f"bad frame start {self.buf[:20]!r}")
                    self.transport.abort()
                return
            end = m.end() + int(m[1])
            if len(self.buf) < end:
                return
            msg, self.buf = self.buf[m.end():end], self.buf[end:]
            try:
                self.records.append(parse_message(msg))
            except (AssertionError, ValueError) as exc:
                self.r.errors.append(str(exc))
            if self.r.kill_after is not None and len(self.r.records) >= self.r.kill_after:
                self.r.kill()

    def eof_received(self) -> bool:
        if self.buf and self.life == self.r.life:
            self.r.errors.append(f"{len(self.buf)} bytes of a cut frame at the end")
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.r._transports.discard(self.transport)


@dataclass
class DatagramReceiver(asyncio.DatagramProtocol):
    records: list[Message] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.records.append(parse_message(data))
        except (AssertionError, ValueError) as exc:
            self.errors.append(str(exc))


async def start_datagram(path: str | None = None) -> tuple[asyncio.DatagramTransport,
                                                           DatagramReceiver, Any]:
    """A UDP receiver on loopback (``path`` None) or a unix datagram socket at ``path``;
    returns (transport, receiver, its address)."""
    loop = asyncio.get_running_loop()
    receiver = DatagramReceiver()
    if path is None:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: receiver, local_addr=("127.0.0.1", 0))
    else:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: receiver, local_addr=path, family=socket.AF_UNIX)
    return transport, receiver, transport.get_extra_info("sockname")


class HttpReceiver:
    """POST /siem over TLS with a required client certificate; the first ``fail_first``
    requests are answered 503. ``posts``: (status, client CN, the JSON records) of each."""

    def __init__(self, tls: ssl.SSLContext, fail_first: int = 0) -> None:
        self.tls = tls
        self.fail_first = fail_first
        self.posts: list[tuple[int, str | None, list[dict[str, Any]]]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return [r for status, _, records in self.posts if status == 200 for r in records]

    async def _post(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-ndjson", request.content_type
        body = await request.text()
        assert body.endswith("\n")
        records = [json.loads(line) for line in body.splitlines()]
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        cn = next((v for rdn in (peer or {}).get("subject", ()) for k, v in rdn
                   if k == "commonName"), None)
        status = 503 if len(self.posts) < self.fail_first else 200
        self.posts.append((status, cn, records))
        return web.Response(status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/siem", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.tls).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
