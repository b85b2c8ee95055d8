"""TLS and mTLS with real handshakes: the real daemon loop (run_daemon) over a FakeEngine,
certificates made with `cryptography`, clients using the standard ssl module."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deepseekd.daemon import build_app, run_daemon
from deepseekd.config import load_settings
from deepseekd.http.state import ACCOUNTS, LIFECYCLE
from deepseekd.services.lifecycle import Phase
from deepseekd.security.keyring import create_master_key
from tests.fakes import FakeEngine
from tests.support.process import free_port

NOW = dt.datetime.now(dt.timezone.utc)


@dataclass
class Issued:
    cert: Path
    key: Path
    obj: x509.Certificate
    private: ec.EllipticCurvePrivateKey


def _issue(dirpath: Path, name: str, cn: str, *, issuer: Issued | None = None, ca: bool = False,
           server: bool = False, days: int = 30) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(subject)
         .issuer_name(issuer.obj.subject if issuer else subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - dt.timedelta(minutes=5))
         .not_valid_after(NOW + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    cert = b.sign(issuer.private if issuer else key, hashes.SHA256())
    cpath, kpath = dirpath / f"{name}.pem", dirpath / f"{name}.key"
    cpath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kpath.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    return Issued(cpath, kpath, cert, key)


@dataclass
class PKI:
    dir: Path
    ca: Issued
    server: Issued
    client: Issued
    stranger: Issued  # signed by another CA

    def client_ctx(self, cert: Issued | None = None, *,
                   maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca.cert))
        if cert is not None:
            ctx.load_cert_chain(cert.cert, cert.key)
        if maximum is not None:
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = maximum
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    d = tmp_path / "pki"
    d.mkdir()
    ca = _issue(d, "ca", "deepseekd test CA", ca=True)
    other_ca = _issue(d, "other-ca", "someone else's CA", ca=True)
    server = _issue(d, "server", "deepseekd.local", issuer=ca, server=True)
    client = _issue(d, "client", "tester", issuer=ca)
    stranger = _issue(d, "stranger", "tester", issuer=other_ca)
    # The daemon reads its own copies, so tests can replace them.
    for f in ("server.pem", "server.key"):
        shutil.copy(d / f, d / f"live-{f}")
    return PKI(d, ca, server, client, stranger)


@dataclass
class Running:
    url: str
    port: int
    app: object
    key: str
    engine: FakeEngine


@pytest.fixture
async def tls_daemon(tmp_path: Path, pki: PKI, request: pytest.FixtureRequest
                     ) -> AsyncIterator[Running]:
    extra = getattr(request, "param", {})
    create_master_key(tmp_path / "keys", 1)
    port = free_port()
    env = {"DEEPSEEKD_DATA_DIR": str(tmp_path), "DEEPSEEKD_SERVER__PORT": str(port),
           "DEEPSEEKD_WARMUP__REQUESTS": "0",
           "DEEPSEEKD_SERVER__TLS__CERT": str(pki.dir / "live-server.pem"),
           "DEEPSEEKD_SERVER__TLS__KEY": str(pki.dir / "live-server.key"),
           "DEEPSEEKD_SERVER__TLS__CLIENT_CA": str(pki.ca.cert),
           "DEEPSEEKD_SERVER__TLS__RELOAD_INTERVAL_S": "1", **extra}
    engine = FakeEngine(model_name="fake-model", token_delay=0.05)
    app = build_app(load_settings(path=None, env=env), lambda: engine, "fake-model")
    task = asyncio.create_task(run_daemon(app))
    for _ in range(200):
        if app[LIFECYCLE].phase is Phase.READY:
            break
        await asyncio.sleep(0.05)
    assert app[LIFECYCLE].phase is Phase.READY
    user = await app[ACCOUNTS].create_user("tester", "user")
    try:
        yield Running(f"https://127.0.0.1:{port}", port, app, user.api_key, engine)
    finally:
        app[LIFECYCLE].stop_requested.set()
        assert await asyncio.wait_for(task, 30) == 0


async def _handshake(port: int, ctx: ssl.SSLContext) -> x509.Certificate:
    """Complete a TLS handshake and one HTTP exchange; return the server's certificate."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        data = await reader.read()
        assert data.startswith(b"HTTP/1.1 200")
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()


REQUIRE = {"DEEPSEEKD_SERVER__TLS__REQUIRE_CLIENT_CERT": "true"}


@pytest.mark.parametrize("tls_daemon", [REQUIRE], indirect=True)
async def test_mtls_refuses_clients_without_a_certificate_from_the_ca(
        tls_daemon: Running, pki: PKI) -> None:
    for bad in (pki.client_ctx(None), pki.client_ctx(pki.stranger)):
        with pytest.raises((ssl.SSLError, ConnectionResetError, asyncio.IncompleteReadError,
                            AssertionError)):
            await _handshake(tls_daemon.port, bad)
    cert = await _handshake(tls_daemon.port, pki.client_ctx(pki.client))
    assert cert.serial_number == pki.server.obj.serial_number


@pytest.mark.parametrize("tls_daemon", [{}], indirect=True)
async def test_tls_before_1_2_is_refused(tls_daemon: Running, pki: PKI) -> None:
    try:
        old = pki.client_ctx(None, maximum=ssl.TLSVersion.TLSv1_1)
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await _handshake(tls_daemon.port, old)
    await _handshake(tls_daemon.port, pki.client_ctx(None, maximum=ssl.TLSVersion.TLSv1_2))


@pytest.mark.parametrize("tls_daemon", [{**REQUIRE,
                                         "DEEPSEEKD_SERVER__TLS__CLIENT_CERT_USERS": "true"}],
                         indirect=True)
async def test_a_client_certificate_can_stand_for_an_api_key(tls_daemon: Running,
                                                             pki: PKI) -> None:
    conn = aiohttp.TCPConnector(ssl=pki.client_ctx(pki.client))
    async with aiohttp.ClientSession(connector=conn) as http:
        async with http.get(tls_daemon.url + "/v1/models") as r:  # no Authorization header
            assert r.status == 200
            assert (await r.json())["data"][0]["id"] == "fake-model"
        async with http.get(tls_daemon.url + "/v1/models",
                            headers={"Authorization": "Bearer dsk-wrong"}) as r:
            assert r.status == 401  # a presented key is still checked, never overridden


@pytest.mark.parametrize("tls_daemon", [{}], indirect=True)
async def test_rotation_is_picked_up_while_a_stream_is_in_flight(tls_daemon: Running,
                                                                 pki: PKI) -> None:
    from deepseekd.http.state import METRICS

    metrics = tls_daemon.app[METRICS]  # type: ignore[index]
    assert metrics.tls_expiry._value.get() == pki.server.obj.not_valid_after_utc.timestamp()
    conn = aiohttp.TCPConnector(ssl=pki.client_ctx(pki.client), force_close=True)
    async with aiohttp.ClientSession(connector=conn) as http:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 60,
                "stream": True}
        async with http.post(tls_daemon.url + "/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {tls_daemon.key}"}) as r:
            assert r.status == 200
            first = await r.content.readline()
            assert first.startswith(b"data: ")
            # Rotate: a new certificate (new key, longer life) replaces the files in place.
            fresh = _issue(pki.dir, "fresh", "deepseekd.local", issuer=pki.ca, server=True,
                           days=90)
            shutil.copy(fresh.key, pki.dir / "live-server.key")
            shutil.copy(fresh.cert, pki.dir / "live-server.pem")
            seen = None
            for _ in range(100):  # bounded: the reload runs every second
                seen = await _handshake(tls_daemon.port, pki.client_ctx(pki.client))
                if seen.serial_number == fresh.obj.serial_number:
                    break
                await asyncio.sleep(0.1)
            assert seen is not None and seen.serial_number == fresh.obj.serial_number
            rest = (await r.content.read()).decode()
            assert rest.rstrip().endswith("data: [DONE]")  # the old connection finished
    assert metrics.tls_expiry._value.get() == fresh.obj.not_valid_after_utc.timestamp()

    # A broken replacement is refused; the last good certificate stays in use.
    (pki.dir / "live-server.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
    await asyncio.sleep(2.5)
    still = await _handshake(tls_daemon.port, pki.client_ctx(pki.client))
    assert still.serial_number == fresh.obj.serial_number


def test_tls_settings_are_checked_before_start(tmp_path: Path, pki: PKI) -> None:
    from deepseekd.config import ConfigError

    base = {"DEEPSEEKD_DATA_DIR": str(tmp_path)}
    with pytest.raises(ConfigError, match="server.tls.key"):
        load_settings(path=None, env={**base, "DEEPSEEKD_SERVER__TLS__CERT": str(pki.server.cert)})
    with pytest.raises(ConfigError, match="server.tls.client_ca"):
        load_settings(path=None, env={**base, "DEEPSEEKD_SERVER__TLS__CERT": str(pki.server.cert),
                                      "DEEPSEEKD_SERVER__TLS__KEY": str(pki.server.key),
                                      "DEEPSEEKD_SERVER__TLS__REQUIRE_CLIENT_CERT": "1"})
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(path=None, env={**base, "DEEPSEEKD_SERVER__TLS__CERT": "/nonexistent.pem",
                                      "DEEPSEEKD_SERVER__TLS__KEY": str(pki.server.key)})




@pytest.mark.parametrize("tls_daemon", [REQUIRE], indirect=True)
async def test_both_bench_workloads_speak_mtls(tls_daemon: Running, pki: PKI) -> None:
    """`deepseekd bench --cacert --client-cert --client-key`, single-turn and chat, against
    a daemon that requires a client certificate."""
    from deepseekd.bench import BenchConfig, run_bench
    from deepseekd.bench_chat import ChatConfig, run_chat

    tls_daemon.engine.token_delay = 0.0
    tls_daemon.engine._max_model_len = 4096  # the chat workload draws answers up to 384
    tls = {"cafile": str(pki.ca.cert), "client_cert": str(pki.client.cert),
           "client_key": str(pki.client.key)}
    one = await run_bench(BenchConfig(url=tls_daemon.url, key=tls_daemon.key, requests=2,
                                      max_tokens=4, stream=True, progress=False, **tls))
    assert (one.ok, one.failed) == (2, 0)
    chat = await run_chat(ChatConfig(url=tls_daemon.url, key=tls_daemon.key, users=1,
                                     duration_s=1.0, think_s=0.0, **tls))
    assert chat.requests_ok >= 1 and chat.requests_failed == 0, chat
    without = await run_chat(ChatConfig(url=tls_daemon.url, key=tls_daemon.key, users=1,
                                        duration_s=0.5, think_s=0.0, cafile=tls["cafile"]))
    assert without.requests_ok == 0 and without.requests_failed >= 1
