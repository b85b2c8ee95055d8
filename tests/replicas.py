"""Several replicas of the daemon on one PostgreSQL, behind a round-robin proxy, as a
Kubernetes Service in front of a Deployment would put them.

* ``start_cluster(tmp, pg)`` sets up the first replica with the real `deepseekd init` (a new
  database: it creates master key v1 and the first admin), copies that key file into every
  other replica's own data dir (the README: hosts share the key, nothing else), and starts
  ``n`` processes of tests/support/fake_daemon.py (the real daemon over the FakeEngine),
  each with its own data dir and port, all on the one database;
* ``cluster.url`` is the proxy: each request goes to the next replica in turn (a replica
  that refuses the connection is skipped, as a load balancer takes a stopped pod out);
  bodies, headers, cookies and server-sent events pass through; ``cluster.proxy.routed``
  says which replica answered what. ``cluster.replicas[i].url`` addresses one directly;
* ``cluster.admin`` is an admin session (password + TOTP, opened once: a TOTP code is
  good once) for the admin API on any replica; ``add_user``/``add_key`` go through it;
* ``replica.stop(sig)`` / ``replica.start()`` / ``replica.cli(...)`` stop, restart (same
  port, same data dir) and run the real CLI as that replica (its environment).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pyotp
from aiohttp import web

from tests.e2e.conftest import cli
from tests.pg import PostgresServer
from tests.support.process import DaemonProcess, clean_env, free_port, start_fake_daemon

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "host",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
}
"""Headers about one connection, not the message: the proxy sets its own."""


@dataclass
class Replica:
    """One daemon process: its own data dir (with the shared master key) and port."""

    index: int
    data: Path
    port: int
    env: dict[str, str]
    """The CLI's environment as this replica: data dir, database URL, model, settings."""
    daemon_env: dict[str, str]
    """What the daemon gets on top (the FakeEngine's knobs)."""
    process: DaemonProcess | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.proc.poll() is None

    def start(self) -> None:
        """Start (or restart) this replica on its port; ready when this returns."""
        assert not self.running, f"replica {self.index} is running"
        self.starts += 1
        log = self.data.parent / f"replica-{self.index}-{self.starts}.log"
        extra = {
            k: v
            for k, v in {**self.env, **self.daemon_env}.items()
            if k.startswith("DEEPSEEKD_") and k != "DEEPSEEKD_DATA_DIR"
        }
        self.process = start_fake_daemon(self.data, log, self.port, **extra)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` (SIGTERM drains; SIGKILL is a crash) and wait; the exit code."""
        assert self.process is not None
        return self.process.stop(sig, timeout)

    def log(self) -> str:
        return self.process.log() if self.process is not None else ""

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The real `deepseekd ARGS` on this replica's host (its data dir and key file)."""
        return cli(*args, env=self.env, timeout=timeout)


class RoundRobinProxy:
    """A tiny HTTP load balancer on a loopback port, its loop in a thread of its own."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self.routed: list[tuple[int, str, str, int, str]] = []
        """(replica index, method, path, status, request id) of every answer, in order."""
        self.in_flight = [0] * len(replicas)
        """Requests each replica is answering now."""
        self._turn = itertools.count()
        self._port = free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        for _ in range(len(self.replicas)):
            replica = self.replicas[next(self._turn) % len(self.replicas)]
            try:
                up = await self._session.request(
                    request.method,
                    replica.url + request.path_qs,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                )
            except aiohttp.ClientConnectorError:
                continue  # stopped or not yet listening: the next one
            self.in_flight[replica.index] += 1
            try:
                return await self._relay(request, up, replica.index)
            finally:
                self.in_flight[replica.index] -= 1
                up.release()
        return web.json_response(
            {
                "error": {
                    "message": "no replica is reachable",
                    "type": "server_error",
                    "code": "bad_gateway",
                    "param": None,
                }
            },
            status=502,
        )

    async def _relay(
        self, request: web.Request, up: aiohttp.ClientResponse, index: int
    ) -> web.StreamResponse:
        out = web.StreamResponse(status=up.status, reason=up.reason)
        for k, v in up.headers.items():
            if k.lower() not in HOP_BY_HOP:
                out.headers.add(k, v)
        self.routed.append(
            (index, request.method, request.path, up.status, up.headers.get("X-Request-Id", ""))
        )
        await out.prepare(request)
        try:
            async for chunk in up.content.iter_any():  # server-sent events as they come
                await out.write(chunk)
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
            return out  # the replica went away mid-answer: the client sees it cut short
        await out.write_eof()
        return out

    async def _serve(self, started: Future[None]) -> None:
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(
            # A connection per request: one kept open to a replica that then stops would
            # fail the next request sent on it; a new one is refused and the next tried.
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self._port).start()
            started.set_result(None)
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await self._session.close()

    def start(self) -> None:
        started: Future[None] = Future()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._serve(started))
            except BaseException as exc:  # surfaced to start()
                if not started.done():
                    started.set_exception(exc)
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=main, name="round-robin-proxy", daemon=True)
        self._thread.start()
        started.result(30)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)


@dataclass
class Cluster:
    replicas: list[Replica]
    proxy: RoundRobinProxy
    db_url: str
    first_admin: dict[str, Any]
    """What `deepseekd init` printed on the first replica (name, api_key, password, totp_uri)."""
    admin: dict[str, str] = field(default_factory=dict)
    """Authorization for the admin API (a session: valid on every replica)."""

    @property
    def url(self) -> str:
        return self.proxy.url

    def admin_call(self, method: str, path: str, on: int = 0, **kw: Any) -> httpx.Response:
        """An admin API call made on replica ``on``."""
        return httpx.request(
            method, self.replicas[on].url + path, headers=self.admin, timeout=60, **kw
        )

    def add_user(self, name: str, role: str = "user", on: int = 0, **limits: int) -> dict[str, Any]:
        """A user made through the admin API on replica ``on``; their one-time credentials."""
        r = self.admin_call(
            "POST", "/admin/api/users", on, json={"name": name, "role": role, **limits}
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    def add_key(self, name: str, on: int = 0) -> tuple[int, str]:
        """Another API key for ``name`` (admin API on replica ``on``): (id, key)."""
        r = self.admin_call("POST", f"/admin/api/users/{name}/keys", on, json={"label": "t"})
        assert r.status_code == 201, r.text
        return int(r.json()["id"]), str(r.json()["api_key"])

    def stop(self) -> None:
        self.proxy.stop()
        for r in self.replicas:
            if r.process is not None:
                r.stop(timeout=30)


def _host_env(data: Path, db_url: str, model: Path, settings: dict[str, str]) -> dict[str, str]:
    return clean_env(
        DEEPSEEKD_DATA_DIR=str(data),
        DEEPSEEKD_STORE__URL=db_url,
        DEEPSEEKD_ENGINE__MODEL=str(model),
        **settings,
    )


def _share_master_key(first: Path, other: Path) -> None:
    """What the README asks of a second host: the first host's key file(s), mode 0600."""
    keys = other / "keys"
    keys.mkdir(parents=True, mode=0o700)
    for f in (first / "keys").glob("master-v*.key"):
        shutil.copy2(f, keys / f.name)
        (keys / f.name).chmod(0o600)


def _init_first(env: dict[str, str]) -> dict[str, Any]:
    res = cli("init", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(json.loads(res.stdout))


def _open_admin_session(cluster: Cluster) -> None:
    creds = cluster.first_admin
    code = pyotp.TOTP(pyotp.parse_uri(creds["totp_uri"]).secret).now()
    r = httpx.post(
        cluster.replicas[0].url + "/admin/api/login",
        timeout=60,
        json={"username": creds["name"], "password": creds["password"], "totp": code},
    )
    assert r.status_code == 200, r.text
    cluster.admin = {"Authorization": f"Bearer {r.json()['token']}"}


@contextmanager
def start_cluster(
    tmp: Path,
    pg: PostgresServer,
    n: int = 3,
    settings: dict[str, str] | None = None,
    engine: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    """``n`` replicas on a new database of ``pg`` and the proxy; stopped on exit.
    ``settings``: DEEPSEEKD_* for every replica and its CLI; ``engine``: the FakeEngine's
    DEEPSEEKD_TEST_FAKE_* knobs (echo by default)."""
    db_url = pg.create_database()
    model = tmp / "model"  # `init` wants the configured model to exist; the FakeEngine serves
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    daemon_env = {"DEEPSEEKD_TEST_FAKE_ECHO": "1", **(engine or {})}
    replicas = [
        Replica(
            i,
            tmp / f"replica-{i}" / "data",
            free_port(),
            _host_env(tmp / f"replica-{i}" / "data", db_url, model, settings or {}),
            daemon_env,
        )
        for i in range(n)
    ]
    first_admin = _init_first(replicas[0].env)
    for r in replicas[1:]:
        _share_master_key(replicas[0].data, r.data)
    cluster = Cluster(replicas, RoundRobinProxy(replicas), db_url, first_admin)
    try:
        for r in replicas:
            r.start()
        cluster.proxy.start()
        _open_admin_session(cluster)
        yield cluster
    finally:
        cluster.stop()
