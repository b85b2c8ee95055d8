"""The audit forwarder against real receivers on loopback (tests/support/siem_receivers.py)
and a real database (a SQLite file and a private PostgreSQL where the store matters): a TLS
syslog receiver killed in the middle of a batch and restarted on the same port, a forwarder
stopped with a batch unacknowledged and started again, a JSON-lines file whose directory
vanishes, an HTTPS endpoint that requires a client certificate, UDP and unix syslog, two
forwarders on one database, the lag metric, and the settings refused at start."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from deepseekd.config import ConfigError, SiemSettings, TlsSettings, load_settings
from deepseekd.domain.audit import CHAIN_FIELDS, GENESIS, Event
from deepseekd.obs.metrics import Metrics
from deepseekd.obs.siem import RECORD_FIELDS, SD_ID, SyslogFormat, json_record
from deepseekd.security.chain import chain_hash
from deepseekd.security.tls import build_context
from deepseekd.services.audit import AuditLog
from deepseekd.services.siem import SiemForwarder
from deepseekd.store import audit as audit_repo
from deepseekd.store import export_cursors
from deepseekd.store.db import Database
from tests.api.test_tls import Issued, _issue
from tests.support.services import TEST_AUDIT_KEY
from tests.support.siem_receivers import (
    HttpReceiver,
    SyslogReceiver,
    parse_message,
    start_datagram,
)

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
FAST = {"poll_interval_s": 0.05, "retry_max_s": 0.2, "timeout_s": 10.0}
DEADLINE_S = 60.0


# --------------------------------------------------------------------------- helpers


@dataclass
class Pki:
    ca: Issued
    server: Issued
    client: Issued
    stranger: Issued  # a client certificate from another CA

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        """The daemon's own server context builder, with the test CA for client certs."""
        cfg = TlsSettings(cert=str(self.server.cert), key=str(self.server.key),
                          client_ca=str(self.ca.cert) if require_client_cert else "",
                          require_client_cert=require_client_cert)
        return build_context(cfg).context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    ca = _issue(d, "ca", "SIEM test CA", ca=True)
    other = _issue(d, "other-ca", "someone else's CA", ca=True)
    return Pki(ca, _issue(d, "siem", "siem.hospital.local", issuer=ca, server=True),
               _issue(d, "client", "deepseekd", issuer=ca),
               _issue(d, "stranger", "deepseekd", issuer=other))


async def until(cond: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    """Poll ``cond`` until true; fail naming ``what`` after ``timeout`` (generous)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def append(audit: AuditLog, clock: Any, n: int, start: int = 1) -> None:
    """``n`` events; some with the characters syslog and JSON must escape."""
    for i in range(start, start + n):
        clock.advance(1)
        await audit.append(Event(
            action="test.action", actor=f"user{i}", actor_id=i, role="user",
            target=f'thing:{i}] "quoted" \\ back', outcome="ok" if i % 4 else "denied",
            detail=f"event {i}: Ärztin, 患者\nnext line"))


async def db_events(db: Database) -> dict[int, dict[str, Any]]:
    rows = await db.read("test.events", lambda s: audit_repo.events_after(s, 0, 100_000))
    return {ev["id"]: ev for ev in rows}


async def cursor_of(db: Database, sink: str) -> export_cursors.Cursor:
    return await db.read("test.cursor", lambda s: export_cursors.get(s, sink))


async def until_async(cond: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def cursor_is(db: Database, sink: str, expected: tuple[int, str]) -> bool:
    return tuple(await cursor_of(db, sink)) == expected


def empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "deepseekd.toml"
    path.write_text("")
    return path


def sample(metrics: Metrics, name: str, sink: str) -> float:
    value = metrics.registry.get_sample_value(name, {"sink": sink})
    assert value is not None, f"{name}{{sink={sink!r}}} is not exported"
    return value


def verify_copy(records: list[dict[str, Any]]) -> None:
    """What a SIEM holding the audit key can do with its copy: recompute every hash and
    follow every link from the genesis."""
    prev = GENESIS
    for i, rec in enumerate(records, start=1):
        assert rec["id"] == i and rec["prev_hash"] == prev, f"link broken at {rec['id']}"
        row = {k: rec[k] for k in CHAIN_FIELDS}
        assert chain_hash(TEST_AUDIT_KEY, prev, row) == rec["hash"], f"hash of {rec['id']}"
        prev = rec["hash"]


class Running:
    """A forwarder's task, for a test to cancel (a daemon stopping) and start again."""

    def __init__(self, forwarder: SiemForwarder, metrics: Metrics) -> None:
        self.forwarder = forwarder
        self.metrics = metrics
        self.task = asyncio.create_task(forwarder.run())

    async def stop(self, grace_s: float = 1.0) -> None:
        """As the daemon stops it: a batch acknowledged meanwhile keeps its cursor."""
        await self.forwarder.stop(self.task, grace_s)
        assert self.task.cancelled()
        await self.forwarder.close()


@pytest.fixture
async def audit(db: Database, clock: Any) -> AuditLog:
    return AuditLog(db, lambda: TEST_AUDIT_KEY, clock)


@pytest.fixture
async def start(db: Database, audit: AuditLog, clock: Any) -> AsyncIterator[
        Callable[..., Running]]:
    """``start(syslog_url=..., batch=...)``: a forwarder running on the test database."""
    running: list[Running] = []

    def make(**cfg: Any) -> Running:
        metrics = Metrics()
        forwarder = SiemForwarder.from_settings(SiemSettings(**{**FAST, **cfg}), db, audit,
                                                metrics, clock)
        assert forwarder is not None
        running.append(Running(forwarder, metrics))
        return running[-1]

    yield make
    for r in running:
        if not r.task.done():
            await r.stop()


def ids(messages: list[Any]) -> list[int]:
    return [m.record["id"] for m in messages]


# --------------------------------------------------------------------------- syslog over TLS


async def test_tls_syslog_receiver_killed_mid_batch_gets_every_event(
        db: Database, audit: AuditLog, clock: Any, pki: Pki,
        start: Callable[..., Running]) -> None:
    """The receiver dies in the third batch (after 10 of its 25 records) and comes back on
    the same port after more events were written: every event arrives, each with its hash
    from the database, in order on every connection; the cut batch is sent again whole from
    its first event, nothing before it is; the cursor ends at the head; the lag meanwhile
    counts what the SIEM has not acknowledged."""
    receiver = SyslogReceiver(pki.server_context())
    receiver.kill_after = 60
    await receiver.start()
    await append(audit, clock, 100)
    fwd = start(syslog_url=f"tls://127.0.0.1:{receiver.port}", ca_file=str(pki.ca.cert),
                batch=25)

    await until(lambda: receiver.dead, "the receiver to die mid-batch")
    await until(lambda: sample(fwd.metrics, "deepseekd_siem_errors_total", "syslog") >= 2,
                "the forwarder to fail against the dead receiver")
    await append(audit, clock, 50, start=101)
    assert (await cursor_of(db, "syslog")).last_id == 50  # two batches acknowledged
    await until(lambda: sample(fwd.metrics, "deepseekd_siem_lag_events", "syslog") == 100,
                "the lag to count the 100 unacknowledged events")

    receiver.kill_after = None
    await receiver.start()  # the same port
    await until(lambda: set(ids(receiver.records)) >= set(range(1, 151)), "every event")

    assert receiver.errors == []
    conns = [ids(c) for c in receiver.connections]
    assert conns[:3] == [list(range(1, 26)), list(range(26, 51)), list(range(51, 61))]
    assert conns[3][0] == 51, "the cut batch is sent again from its first event"
    for c in conns:
        assert c == list(range(c[0], c[0] + len(c))), f"out of order on a connection: {c}"
    stored = await db_events(db)
    for msg in receiver.records:
        assert msg.record == {k: stored[msg.record["id"]][k] for k in RECORD_FIELDS}
        assert msg.sd_id == SD_ID
        assert msg.sd["id"] == str(msg.record["id"]) and msg.sd["hash"] == msg.record["hash"]
        assert msg.sd["prev_hash"] == msg.record["prev_hash"]
    await until_async(lambda: cursor_is(db, "syslog", (150, stored[150]["hash"])),
                      "the cursor at the head")
    await until(lambda: sample(fwd.metrics, "deepseekd_siem_lag_events", "syslog") == 0,
                "the lag to fall to 0")
    # Acknowledged batches only: the cut one counted once, when it got through.
    assert sample(fwd.metrics, "deepseekd_siem_sent_total", "syslog") == 150
    await receiver.stop()


@SQLITE_ONLY
async def test_a_restart_resends_only_the_unacknowledged_batch(
        db: Database, audit: AuditLog, clock: Any, pki: Pki,
        start: Callable[..., Running]) -> None:
    """The daemon stops while the receiver holds a batch without acknowledging it: the
    cursor stays before that batch, and the next forwarder starts exactly there."""
    receiver = SyslogReceiver(pki.server_context())
    receiver.pause_from = 3
    await receiver.start()
    await append(audit, clock, 35)
    first = start(syslog_url=f"tls://127.0.0.1:{receiver.port}", ca_file=str(pki.ca.cert),
                  batch=10, timeout_s=120.0)
    await until(lambda: receiver.paused == 1 and len(receiver.records) == 30,
                "three batches through and the fourth held")
    await first.stop()
    assert (await cursor_of(db, "syslog")).last_id == 30

    await append(audit, clock, 5, start=36)
    receiver.pause_from = None
    second = start(syslog_url=f"tls://127.0.0.1:{receiver.port}", ca_file=str(pki.ca.cert),
                   batch=10)
    await until(lambda: len(receiver.records) == 40, "the rest after the restart")
    conns = [ids(c) for c in receiver.connections]
    assert conns == [list(range(1, 11)), list(range(11, 21)), list(range(21, 31)), [],
                     list(range(31, 41))]
    await until(lambda: sample(second.metrics, "deepseekd_siem_sent_total", "syslog") == 10,
                "the second forwarder to count the 10 it sent")
    assert receiver.errors == []
    await receiver.stop()


class SlowToRecord:
    """A transport whose batches the SIEM acknowledges, then the forwarder is slow to note
    it (a busy database): the window between the acknowledgement and the cursor write."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.acknowledged = asyncio.Event()

    async def send(self, events: list[dict[str, Any]]) -> None:
        await self.inner.send(events)
        self.acknowledged.set()
        await asyncio.sleep(0.5)

    async def close(self) -> None:
        await self.inner.close()


@SQLITE_ONLY
async def test_a_stop_right_after_the_acknowledgement_keeps_the_cursor(
        db: Database, audit: AuditLog, clock: Any, pki: Pki,
        start: Callable[..., Running]) -> None:
    """The daemon stops (SIGTERM) after the SIEM acknowledged a batch but before its cursor
    is written: the stop waits for the write, so the restarted daemon does not send the
    batch again (it did: CI saw events 4 and 5 twice)."""
    receiver = SyslogReceiver(pki.server_context())
    await receiver.start()
    await append(audit, clock, 5)
    fwd = start(syslog_url=f"tls://127.0.0.1:{receiver.port}", ca_file=str(pki.ca.cert),
                batch=10)
    [sink] = fwd.forwarder.sinks
    slow = SlowToRecord(sink.transport)
    sink.transport = slow
    await asyncio.wait_for(slow.acknowledged.wait(), DEADLINE_S)
    await fwd.stop(grace_s=10.0)
    stored = await db_events(db)
    assert tuple(await cursor_of(db, "syslog")) == (5, stored[5]["hash"])

    second = start(syslog_url=f"tls://127.0.0.1:{receiver.port}", ca_file=str(pki.ca.cert),
                   batch=10)
    await append(audit, clock, 1, start=6)
    await until(lambda: len(receiver.records) == 6, "the new event")
    assert ids(receiver.records) == [1, 2, 3, 4, 5, 6], "each event once"
    await second.stop()
    await receiver.stop()


@SQLITE_ONLY
async def test_a_stop_gives_up_on_a_batch_stuck_on_the_network(
        db: Database, audit: AuditLog, clock: Any, pki: Pki,
        start: Callable[..., Running]) -> None:
    """A receiver that holds a batch without acknowledging it does not hold the daemon's
    stop past the grace period; the batch is not counted as sent."""
    receiver = SyslogReceiver(pki.server_context())
    receiver.pause_from = 0
    await receiver.start()
    await append(audit, clock, 3)
    fwd = start(syslog_url=f"tls://127.0.0.1:{receiver.port}", ca_file=str(pki.ca.cert),
                batch=10, timeout_s=120.0)
    await until(lambda: receiver.paused == 1, "the batch held")
    loop = asyncio.get_running_loop()
    began = loop.time()
    await fwd.stop(grace_s=0.5)
    assert loop.time() - began < 30, "the stop waited for the network"
    assert (await cursor_of(db, "syslog")).last_id == 0
    receiver.pause_from = None
    await receiver.stop()


@SQLITE_ONLY
async def test_plain_tcp_syslog_waits_for_a_receiver_that_is_down(
        db: Database, audit: AuditLog, clock: Any, start: Callable[..., Running]) -> None:
    """tcp://: nothing listens at first (the batch waits, the lag counts it); once the
    receiver is up, every event arrives once, in order, one connection per batch."""
    receiver = SyslogReceiver(None)
    await receiver.start()
    await receiver.stop()  # its port, with nobody listening
    await append(audit, clock, 30)
    fwd = start(syslog_url=f"tcp://127.0.0.1:{receiver.port}", batch=10)
    await until(lambda: sample(fwd.metrics, "deepseekd_siem_errors_total", "syslog") >= 2,
                "connections to be refused")
    assert sample(fwd.metrics, "deepseekd_siem_lag_events", "syslog") == 30
    await receiver.start()
    await until(lambda: sample(fwd.metrics, "deepseekd_siem_sent_total", "syslog") == 30,
                "30 acknowledged")
    assert [ids(c) for c in receiver.connections] == [
        list(range(1, 11)), list(range(11, 21)), list(range(21, 31))]
    assert receiver.errors == []
    await receiver.stop()


@SQLITE_ONLY
async def test_tls_syslog_refuses_a_receiver_the_ca_did_not_sign(
        db: Database, audit: AuditLog, clock: Any, pki: Pki, tmp_path: Path,
        start: Callable[..., Running]) -> None:
    """A receiver whose certificate another CA signed gets nothing, and the batch waits."""
    wrong = _issue(tmp_path / "pki", "impostor", "siem.hospital.local", issuer=pki.stranger,
                   server=True)
    cfg = TlsSettings(cert=str(wrong.cert), key=str(wrong.key))
    receiver = SyslogReceiver(build_context(cfg).context)
    await receiver.start()
    await append(audit, clock, 3)
    fwd = start(syslog_url=f"tls://127.0.0.1:{receiver.port}", ca_file=str(pki.ca.cert))
    await until(lambda: sample(fwd.metrics, "deepseekd_siem_errors_total", "syslog") >= 2,
                "the handshake to fail")
    assert receiver.records == []
    assert (await cursor_of(db, "syslog")).last_id == 0
    assert sample(fwd.metrics, "deepseekd_siem_lag_events", "syslog") == 3
    await receiver.stop()


# --------------------------------------------------------------------------- other sinks


@SQLITE_ONLY
async def test_jsonl_file_gets_every_event_and_survives_its_directory_vanishing(
        db: Database, audit: AuditLog, clock: Any, tmp_path: Path,
        start: Callable[..., Running]) -> None:
    folder = tmp_path / "siem"
    folder.mkdir()
    path = folder / "audit.jsonl"
    await append(audit, clock, 12)
    fwd = start(jsonl_path=str(path), batch=5)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    await until(lambda: len(lines()) == 12, "12 lines")
    first = lines()
    verify_copy(first)  # the copy verifies on its own, with the key
    assert all(set(rec) == set(RECORD_FIELDS) for rec in first)
    stored = await db_events(db)
    assert first == [{k: stored[i][k] for k in RECORD_FIELDS} for i in range(1, 13)]

    shutil.rmtree(folder)
    await append(audit, clock, 3, start=13)
    await until(lambda: sample(fwd.metrics, "deepseekd_siem_errors_total", "jsonl") >= 2,
                "writes to fail")
    folder.mkdir()
    await until(lambda: len(lines()) == 3, "the 3 later events in the new file")
    assert [rec["id"] for rec in lines()] == [13, 14, 15]
    assert lines()[0]["prev_hash"] == first[-1]["hash"]
    assert path.read_bytes().endswith(b"\n")


@SQLITE_ONLY
async def test_http_sink_with_mtls(db: Database, audit: AuditLog, clock: Any, pki: Pki,
                                   start: Callable[..., Running]) -> None:
    """An endpoint that requires a client certificate: the forwarder's is accepted; a 503
    gets the same batch again. Without a certificate, or with one from another CA, the
    handshake is refused and nothing is delivered."""
    receiver = HttpReceiver(pki.server_context(require_client_cert=True), fail_first=1)
    await receiver.start()
    url = f"https://127.0.0.1:{receiver.port}/siem"
    await append(audit, clock, 8)
    fwd = start(http_url=url, ca_file=str(pki.ca.cert), cert_file=str(pki.client.cert),
                key_file=str(pki.client.key), batch=5)
    await until(lambda: len(receiver.accepted) >= 8, "8 accepted records")
    await fwd.stop()
    statuses = [(status, cn, [r["id"] for r in records]) for status, cn, records in receiver.posts]
    assert statuses == [(503, "deepseekd", [1, 2, 3, 4, 5]), (200, "deepseekd", [1, 2, 3, 4, 5]),
                        (200, "deepseekd", [6, 7, 8])]
    stored = await db_events(db)
    assert receiver.accepted == [{k: stored[i][k] for k in RECORD_FIELDS} for i in range(1, 9)]

    await append(audit, clock, 2, start=9)
    for cert in (None, pki.stranger):
        extra = {"cert_file": str(cert.cert), "key_file": str(cert.key)} if cert else {}
        other = start(http_url=url, ca_file=str(pki.ca.cert), **extra)
        await until(lambda m=other.metrics: sample(m, "deepseekd_siem_errors_total", "http") >= 2,
                    "the handshake to be refused")
        await other.stop()
    assert len(receiver.posts) == 3
    assert (await cursor_of(db, "http")).last_id == 8
    await receiver.stop()


@SQLITE_ONLY
@pytest.mark.parametrize("kind", ["udp", "unix"])
async def test_datagram_syslog(db: Database, audit: AuditLog, clock: Any, tmp_path: Path,
                               kind: str, start: Callable[..., Running]) -> None:
    """One RFC 5424 message per datagram, unframed: the header fields, the SD element and
    the JSON record agree with the database."""
    path = str(tmp_path / "log.sock") if kind == "unix" else None
    transport, receiver, address = await start_datagram(path)
    url = f"unix://{path}" if kind == "unix" else f"udp://127.0.0.1:{address[1]}"
    await append(audit, clock, 10)
    start(syslog_url=url, batch=4, app_name="deepseekd-test", facility=10)
    await until(lambda: len(receiver.records) == 10, "10 datagrams")
    assert receiver.errors == []
    stored = await db_events(db)
    for msg in sorted(receiver.records, key=lambda m: m.record["id"]):
        ev = stored[msg.record["id"]]
        assert msg.record == {k: ev[k] for k in RECORD_FIELDS}
        assert msg.pri == 10 * 8 + (6 if ev["outcome"] == "ok" else 5)
        assert msg.app_name == "deepseekd-test" and msg.msgid == "test.action"
        assert msg.sd["hash"] == ev["hash"] and msg.sd["outcome"] == ev["outcome"]
    transport.close()


def test_syslog_line_is_rfc_5424_with_octet_counting() -> None:
    """Awkward content stays inside its fields: the SD values escaped, the MSG one line of
    ASCII JSON whose values are the stored ones, the count the message's length in bytes."""
    ev = dict.fromkeys(RECORD_FIELDS) | {
        "id": 7, "at": 1_780_000_000.25, "action": "web login", "outcome": "error",
        "target": 'a]b"c\\d', "detail": "Ärztin\n患者", "prev_hash": "0" * 64, "hash": "f" * 64}
    fmt = SyslogFormat(app_name="deepseekd", facility=13, hostname="llm01", procid="42")
    frame = fmt.frame(ev)
    count, _, msg = frame.partition(b" ")
    assert int(count) == len(msg) and msg == fmt.message(ev)
    parsed = parse_message(msg)
    assert (parsed.pri, parsed.timestamp, parsed.hostname, parsed.procid, parsed.msgid) == (
        13 * 8 + 3, "2026-05-28T20:26:40.250000Z", "llm01", "42", "web_login")
    assert parsed.record == ev and msg.endswith(json_record(ev))
    assert parsed.sd == {"id": "7", "hash": "f" * 64, "prev_hash": "0" * 64,
                         "action": "web login", "outcome": "error"}


# --------------------------------------------------------------------------- one forwarder


async def test_only_one_forwarder_per_sink_on_one_database(
        db: Database, audit: AuditLog, clock: Any, tmp_path: Path,
        start: Callable[..., Running]) -> None:
    """Two daemons' forwarders on one database: one sends, the other stands by; when the
    first stops, the second takes over where it stopped. Every event once."""
    path = tmp_path / "audit.jsonl"
    await append(audit, clock, 20)
    a, b = start(jsonl_path=str(path), batch=5), start(jsonl_path=str(path), batch=5)

    def lines() -> list[int]:
        return [json.loads(x)["id"] for x in path.read_text().splitlines()] if path.exists() \
            else []

    def sent() -> dict[Running, float]:
        return {r: sample(r.metrics, "deepseekd_siem_sent_total", "jsonl") for r in (a, b)}

    await until(lambda: sum(sent().values()) == 20, "20 events acknowledged")
    assert lines() == list(range(1, 21))
    counts = sent()
    assert sorted(counts.values()) == [0, 20], counts
    holder, standby = (a, b) if counts[a] else (b, a)
    await holder.stop()
    await append(audit, clock, 10, start=21)
    await until(lambda: len(lines()) == 30, "the 10 later events from the other forwarder")
    assert lines() == list(range(1, 31))
    await until(lambda: sample(standby.metrics, "deepseekd_siem_sent_total", "jsonl") == 10,
                "the other forwarder to count its 10")
    assert sample(standby.metrics, "deepseekd_siem_lag_events", "jsonl") == 0


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_forwarder_that_loses_its_lock_connection_hands_the_sink_over(
        db: Database, audit: AuditLog, clock: Any, tmp_path: Path,
        start: Callable[..., Running]) -> None:
    """PostgreSQL ends the session holding the advisory lock (a network cut, a restarted
    server): the other daemon takes the sink, the first notices before its next batch and
    stands by. Every event once."""
    path = tmp_path / "audit.jsonl"
    await append(audit, clock, 10)
    start(jsonl_path=str(path), batch=5)
    start(jsonl_path=str(path), batch=5)

    def lines() -> list[int]:
        return [json.loads(x)["id"] for x in path.read_text().splitlines()] if path.exists() \
            else []

    def holders() -> Any:
        return lambda s: [tuple(r) for r in s.execute(text(
            "SELECT pid, objid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = :c"), {"c": export_cursors.LOCK_CLASS})]

    await until(lambda: len(lines()) == 10, "10 lines")
    (first,) = await db.read("test.locks", holders())
    await db.read("test.kill", lambda s: s.execute(
        text("SELECT pg_terminate_backend(:p)"), {"p": first[0]}).scalar())

    async def taken_over() -> bool:
        now = await db.read("test.locks", holders())
        return len(now) == 1 and now[0][0] != first[0]

    await until_async(taken_over, "the other forwarder to take the lock")
    await append(audit, clock, 10, start=11)
    await until(lambda: len(lines()) == 20, "the 10 later events")
    assert lines() == list(range(1, 21))


@SQLITE_ONLY
async def test_a_cursor_past_the_chain_is_rewound(
        db: Database, audit: AuditLog, clock: Any, tmp_path: Path,
        start: Callable[..., Running]) -> None:
    """A database restored from an older backup: the chain ends before the cursor. The
    events written from then on are forwarded (not skipped as already sent)."""
    await append(audit, clock, 3)
    stored = await db_events(db)
    await db.write("test.cursor", lambda s: export_cursors.advance(
        s, "jsonl", export_cursors.START, export_cursors.Cursor(9, "e" * 64), clock()))
    path = tmp_path / "audit.jsonl"
    start(jsonl_path=str(path))
    await until_async(lambda: cursor_is(db, "jsonl", (3, stored[3]["hash"])),
                      "the cursor back at the chain's end")
    assert not path.exists()  # nothing sent for ids the SIEM already has
    await append(audit, clock, 2, start=4)
    await until(lambda: path.exists() and path.read_text().count("\n") == 2, "the 2 new events")
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == [4, 5]
    assert json.loads(path.read_text().splitlines()[0])["prev_hash"] == stored[3]["hash"]


# --------------------------------------------------------------------------- settings


def test_lag_and_counters_exported_at_zero_for_every_sink() -> None:
    metrics = Metrics()
    for sink in ("syslog", "jsonl", "http"):
        assert sample(metrics, "deepseekd_siem_lag_events", sink) == 0
        assert sample(metrics, "deepseekd_siem_sent_total", sink) == 0
        assert sample(metrics, "deepseekd_siem_errors_total", sink) == 0


@pytest.mark.parametrize(("env", "named"), [
    ({"SYSLOG_URL": "tls://siem.example:6514/x"}, "siem.syslog_url"),
    ({"SYSLOG_URL": "syslog.example:514"}, "siem.syslog_url"),
    ({"SYSLOG_URL": "tcp://siem.example:70000"}, "siem.syslog_url"),
    ({"HTTP_URL": "http://siem.example/ingest"}, "siem.http_url"),
    ({"HTTP_URL": "ftp://siem.example/"}, "siem.http_url"),
    ({"JSONL_PATH": "/nonexistent-dir/audit.jsonl"}, "siem.jsonl_path"),
    ({"CERT_FILE": "/etc/hostname"}, "siem.key_file"),
    ({"CA_FILE": "/nonexistent/ca.pem"}, "siem.ca_file"),
    ({"APP_NAME": "deep seekd"}, "siem.app_name"),
    ({"BATCH": "0"}, "siem.batch"),
    ({"FACILITY": "24"}, "siem.facility"),
])
def test_bad_settings_are_refused_naming_the_setting(tmp_path: Path, env: dict[str, str],
                                                     named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(empty_config(tmp_path),
                      env={f"DEEPSEEKD_SIEM__{k}": v for k, v in env.items()})
    assert str(info.value).startswith(named), str(info.value)


def test_good_settings_load(tmp_path: Path, pki: Pki) -> None:
    settings = load_settings(empty_config(tmp_path), env={
        "DEEPSEEKD_SIEM__SYSLOG_URL": "tls://[::1]:6514",
        "DEEPSEEKD_SIEM__HTTP_URL": "http://127.0.0.1:8080/ingest",
        "DEEPSEEKD_SIEM__JSONL_PATH": str(tmp_path / "audit.jsonl"),
        "DEEPSEEKD_SIEM__CA_FILE": str(pki.ca.cert),
        "DEEPSEEKD_SIEM__CERT_FILE": str(pki.client.cert),
        "DEEPSEEKD_SIEM__KEY_FILE": str(pki.client.key)})
    assert settings.siem.syslog_url == "tls://[::1]:6514"


@SQLITE_ONLY
async def test_unreadable_tls_files_stop_the_start(db: Database, audit: AuditLog, clock: Any,
                                                   pki: Pki) -> None:
    """A certificate that is not one (a file that exists, so the loader let it through) is
    refused when the forwarder is built, before the daemon starts, naming the setting."""
    cfg = SiemSettings(syslog_url="tls://127.0.0.1:6514", ca_file=str(pki.ca.cert),
                       cert_file=str(pki.ca.cert), key_file=str(pki.client.key))
    with pytest.raises(ConfigError, match=r"^siem\.cert_file/key_file"):
        SiemForwarder.from_settings(cfg, db, audit, Metrics(), clock)
    assert SiemForwarder.from_settings(SiemSettings(), db, audit, Metrics(), clock) is None
