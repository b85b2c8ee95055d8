"""The audit forwarder against a real rsyslog (Debian's, TLS by its OpenSSL driver, octet
counting on imtcp): every event lands in rsyslog's file with its chain hash; rsyslog killed
with SIGKILL in the middle of the stream and started again on the same port still ends up
with every event, at least once, each with the hash the database holds. This also shows that
rsyslog answers our close_notify, which is what the forwarder takes as its acknowledgement
(obs/siem.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deepseekd.obs.siem import RECORD_FIELDS
from deepseekd.services.audit import AuditLog
from deepseekd.store.db import Database
from tests.api.test_tls import Issued, _issue
from tests.services import test_siem as base
from tests.services.test_siem import Running, append, cursor_of, db_events, sample, until
from tests.support import rsyslog as rsyslog_support
from tests.support.rsyslog import Rsyslog, make_rsyslog
from tests.support.siem_receivers import parse_message

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
audit = base.audit  # the fixtures: the audit log, and forwarders on the test database
start = base.start


def test_rsyslog_is_installed() -> None:
    assert rsyslog_support.available(), (
        "rsyslog (with rsyslog-openssl) missing: .ci/system-deps installs it (make test)")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Issued]:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = _issue(folder, "ca", "SIEM test CA", ca=True)
    return {"ca": ca,
            "server": _issue(folder, "rsyslog", "siem.hospital.local", issuer=ca, server=True),
            "client": _issue(folder, "client", "deepseekd", issuer=ca)}


@pytest.fixture
def rsyslog(tmp_path: Path, pki: dict[str, Issued]) -> Any:
    """rsyslogd requiring a client certificate from the CA (streamDriver.authMode
    x509/certvalid), as the README shows it."""
    r = make_rsyslog(tmp_path / "rsyslog", pki["ca"].cert, pki["server"].cert,
                     pki["server"].key)
    r.start()
    yield r
    r.stop()


def received(r: Rsyslog) -> list[dict[str, Any]]:
    """The records in rsyslog's file; a line cut by the SIGKILL (at most one) left out."""
    records, bad = [], []
    for line in r.lines():
        try:
            records.append(parse_message(line).record)
        except (AssertionError, ValueError):
            bad.append(line)
    assert len(bad) <= 1, bad
    return records


@SQLITE_ONLY
async def test_rsyslog_killed_mid_stream_gets_every_event(
        db: Database, audit: AuditLog, clock: Any, rsyslog: Rsyslog, pki: dict[str, Issued],
        start: Callable[..., Running]) -> None:
    await append(audit, clock, 400)
    fwd = start(syslog_url=f"tls://127.0.0.1:{rsyslog.port}", ca_file=str(rsyslog.ca),
                cert_file=str(pki["client"].cert), key_file=str(pki["client"].key), batch=20)
    await until(lambda: len(rsyslog.lines()) >= 60, "the first batches in rsyslog's file")
    rsyslog.kill()
    in_file_at_kill = {r["id"] for r in received(rsyslog)}
    await until(lambda: sample(fwd.metrics, "deepseekd_siem_errors_total", "syslog") >= 2,
                "the forwarder to fail while rsyslog is down")
    acknowledged = (await cursor_of(db, "syslog")).last_id
    assert 0 < acknowledged < 400
    # What the forwarder took as acknowledged was in rsyslog's file when it died.
    assert set(range(1, acknowledged + 1)) <= in_file_at_kill
    await append(audit, clock, 20, start=401)
    await asyncio.to_thread(rsyslog.start)

    await until(lambda: {r["id"] for r in received(rsyslog)} >= set(range(1, 421)),
                "all 420 events in rsyslog's file")
    stored = await db_events(db)
    for rec in received(rsyslog):
        assert rec == {k: stored[rec["id"]][k] for k in RECORD_FIELDS}
    # rsyslog's %msg% is the record itself: a JSON-lines file for the SIEM to index.
    lines = (rsyslog.dir / "records.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines[-20:]]
    assert records == [{k: stored[r["id"]][k] for k in RECORD_FIELDS} for r in records]
