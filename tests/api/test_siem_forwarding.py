"""The real daemon (tests/support/fake_daemon.py: the app, the database, run_daemon, as a
process) configured with ``[siem] syslog_url = "tls://..."``: the audit events of real
requests reach a TLS syslog receiver with their chain hashes; the copy verifies with the
audit key and ends where `deepseekd audit verify` says the chain does; after a restart the
forwarder resumes after its cursor (the stop event arrives, nothing is sent twice)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from deepseekd.config import TlsSettings
from deepseekd.domain.audit import CHAIN_FIELDS, GENESIS
from deepseekd.obs.siem import RECORD_FIELDS
from deepseekd.security.chain import chain_hash
from deepseekd.security.keyring import Keyring
from deepseekd.security.tls import build_context
from deepseekd.services.keys import KeyService
from deepseekd.store import audit as audit_repo
from deepseekd.store.db import Database
from tests.api.test_tls import _issue
from tests.support.process import DaemonProcess, clean_env, start_fake_daemon
from tests.support.siem_receivers import SyslogReceiver
from tests.support.store_setup import add_users, init_store

DEADLINE_S = 60.0


async def until(cond: Any, what: str, timeout: float = DEADLINE_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def stored_and_key(db_url: str, data: Path) -> tuple[dict[int, dict[str, Any]], bytes]:
    """The chain as the database holds it, and the audit key (what an auditor's tool with
    the key would use to check the SIEM's copy)."""
    async with Database(db_url) as db:
        keys = KeyService(db, Keyring.for_data_dir(data), data / "keys", time.time)
        await keys.check()
        rows = await db.read("test.events", lambda s: audit_repo.events_after(s, 0, 100_000))
        return {ev["id"]: ev for ev in rows}, keys.cached_audit_key()


def audit_verify(data: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "deepseekd", "audit", "verify"],
                          env=clean_env(DEEPSEEKD_DATA_DIR=str(data)), cwd=data,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


async def test_daemon_forwards_real_requests_with_their_chain(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = _issue(pki, "ca", "SIEM test CA", ca=True)
    server = _issue(pki, "siem", "siem.hospital.local", issuer=ca, server=True)
    receiver = SyslogReceiver(build_context(TlsSettings(cert=str(server.cert),
                                                        key=str(server.key))).context)
    await receiver.start()
    data = tmp_path / "data"
    db_url = await init_store(data)
    (nurse,) = await add_users(db_url, data, ["nurse"])
    env = {"DEEPSEEKD_SIEM__SYSLOG_URL": f"tls://127.0.0.1:{receiver.port}",
           "DEEPSEEKD_SIEM__CA_FILE": str(ca.cert),
           "DEEPSEEKD_SIEM__POLL_INTERVAL_S": "0.1", "DEEPSEEKD_SIEM__RETRY_MAX_S": "0.5"}

    async def start_daemon(log: str) -> DaemonProcess:
        # In a thread: the receiver runs on this loop while the daemon starts.
        return await asyncio.to_thread(start_fake_daemon, data, tmp_path / log, **env)

    d = await start_daemon("first.log")
    try:
        async with httpx.AsyncClient(base_url=d.url, timeout=30) as client:
            ok = await client.post("/auth/login",
                                   json={"username": "nurse", "password": nurse.password})
            bad = await client.post("/auth/login",
                                    json={"username": "nurse", "password": "wrong password"})
        assert (ok.status_code, bad.status_code) == (200, 401), (ok.text, bad.text)

        def logins() -> list[str]:
            return [m.record["outcome"] for m in receiver.records
                    if m.record["action"] == "web.login"]

        await until(lambda: logins() == ["ok", "denied"], "both sign-ins at the SIEM")
    finally:
        assert await asyncio.to_thread(d.stop, signal.SIGTERM) == 0, d.log()[-3000:]

    verified = audit_verify(data)
    assert verified["ok"] is True
    stored, key = await stored_and_key(db_url, data)
    got = [m.record for m in receiver.records]
    n = len(got)
    assert [r["id"] for r in got] == list(range(1, n + 1))
    assert got == [{k: stored[i][k] for k in RECORD_FIELDS} for i in range(1, n + 1)]
    prev = GENESIS
    for rec in got:  # the SIEM's copy verifies on its own, with the key
        assert rec["prev_hash"] == prev
        assert chain_hash(key, prev, {k: rec[k] for k in CHAIN_FIELDS}) == rec["hash"]
        prev = rec["hash"]
    # Only the stop event, written after the forwarder stopped, is not there yet.
    assert verified["head_id"] == n + 1 and stored[n + 1]["action"] == "service.stop"

    d = await start_daemon("second.log")
    try:
        await until(lambda: any(m.record["id"] == n + 1 for m in receiver.records),
                    "the stop event after the restart")
    finally:
        assert await asyncio.to_thread(d.stop, signal.SIGTERM) == 0, d.log()[-3000:]
    stop = next(m.record for m in receiver.records if m.record["id"] == n + 1)
    assert (stop["action"], stop["hash"]) == ("service.stop", verified["head_hash"])
    ids = [m.record["id"] for m in receiver.records]
    assert ids == list(range(1, len(ids) + 1)), "each event once, in order"
    assert receiver.errors == []
    await receiver.stop()
