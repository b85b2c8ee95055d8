"""Daily quotas: the window, counting, limits, and the race between concurrent consumers
(tasks in one process, two processes, and two real daemons over HTTP)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from deepseekd.config import AuthSettings, QuotaSettings
from deepseekd.security.keyring import Keyring, create_master_key
from deepseekd.domain.identity import Identity
from tests.support.services import make_accounts
from deepseekd.services.audit import AuditLog
from deepseekd.store.db import Database
from deepseekd.services.keys import KeyService
from deepseekd.services.usage import QuotaService
from deepseekd.store.schema import QuotaUsage
from tests.pg import PostgresServer
from tests.support.process import free_port
from tests.db_fixtures import FakeClock

SUPPORT = Path(__file__).resolve().parents[1] / "support"
UTC = dt.timezone.utc


def utc(*args: int) -> float:
    return dt.datetime(*args, tzinfo=UTC).timestamp()


async def make_user(db: Database, clock: FakeClock, name: str = "alice",
                    **limits: Any) -> Identity:
    accounts = make_accounts(db, clock)
    new = await accounts.create_user(name, "user", **limits)
    who = await accounts.authenticate_key(new.api_key)
    assert who is not None
    return who


async def stored(db: Database, who: Identity, day: str) -> tuple[int, int] | None:
    row = await db.read("test", lambda s: s.execute(select(
        QuotaUsage.requests, QuotaUsage.tokens).where(
        QuotaUsage.user_id == who.user_id, QuotaUsage.day == day)).first())
    return None if row is None else (row.requests, row.tokens)


# --------------------------------------------------------------------------- the window


BERLIN = QuotaSettings(timezone="Europe/Berlin", reset_hour=4)


@pytest.mark.parametrize(
    ("now", "day", "reset"),
    [
        # Winter (CET, UTC+1): midnight is not the boundary, 04:00 local is.
        (utc(2025, 1, 14, 22, 59, 59), "2025-01-14", utc(2025, 1, 15, 3)),  # 23:59:59
        (utc(2025, 1, 14, 23, 0, 0), "2025-01-14", utc(2025, 1, 15, 3)),  # 00:00:00
        (utc(2025, 1, 15, 2, 59, 59), "2025-01-14", utc(2025, 1, 15, 3)),  # 03:59:59
        (utc(2025, 1, 15, 3, 0, 0), "2025-01-15", utc(2025, 1, 16, 3)),  # 04:00:00
        # Summer (CEST, UTC+2).
        (utc(2025, 7, 1, 1, 59, 59), "2025-06-30", utc(2025, 7, 1, 2)),  # 03:59:59
        (utc(2025, 7, 1, 2, 0, 0), "2025-07-01", utc(2025, 7, 2, 2)),  # 04:00:00
        # Spring forward, 2025-03-30 02:00 CET -> 03:00 CEST: the day 03-29 lasts 23 hours.
        (utc(2025, 3, 29, 3, 0, 0), "2025-03-29", utc(2025, 3, 30, 2)),  # 04:00 CET
        (utc(2025, 3, 30, 0, 59, 59), "2025-03-29", utc(2025, 3, 30, 2)),  # 01:59:59 CET
        (utc(2025, 3, 30, 1, 0, 0), "2025-03-29", utc(2025, 3, 30, 2)),  # 03:00 CEST
        (utc(2025, 3, 30, 1, 59, 59), "2025-03-29", utc(2025, 3, 30, 2)),  # 03:59:59 CEST
        (utc(2025, 3, 30, 2, 0, 0), "2025-03-30", utc(2025, 3, 31, 2)),  # 04:00 CEST
        # Fall back, 2025-10-26 03:00 CEST -> 02:00 CET: the day 10-25 lasts 25 hours.
        (utc(2025, 10, 25, 2, 0, 0), "2025-10-25", utc(2025, 10, 26, 3)),  # 04:00 CEST
        (utc(2025, 10, 26, 0, 30, 0), "2025-10-25", utc(2025, 10, 26, 3)),  # 02:30 CEST
        (utc(2025, 10, 26, 1, 30, 0), "2025-10-25", utc(2025, 10, 26, 3)),  # 02:30 CET
        (utc(2025, 10, 26, 2, 59, 59), "2025-10-25", utc(2025, 10, 26, 3)),  # 03:59:59 CET
        (utc(2025, 10, 26, 3, 0, 0), "2025-10-26", utc(2025, 10, 27, 3)),  # 04:00 CET
    ],
)
def test_window_berlin_reset_at_4(tmp_path: Path, now: float, day: str, reset: float) -> None:
    quota = QuotaService(Database(f"sqlite+aiosqlite:///{tmp_path}/w.db"), BERLIN, lambda: now)
    assert quota.window(now) == (day, int(reset))


def test_window_utc_midnight(tmp_path: Path) -> None:
    quota = QuotaService(Database(f"sqlite+aiosqlite:///{tmp_path}/w.db"), QuotaSettings(),
                         time.time)
    assert quota.window(utc(2025, 1, 1, 23, 59, 59)) == ("2025-01-01", int(utc(2025, 1, 2)))
    assert quota.window(utc(2025, 1, 2)) == ("2025-01-02", int(utc(2025, 1, 3)))


def test_window_every_instant_is_before_its_reset(tmp_path: Path) -> None:
    """Across a whole year, hour by hour: the reset is in the future, at most 25 h away, and
    the day key changes exactly when the previous reset passes."""
    quota = QuotaService(Database(f"sqlite+aiosqlite:///{tmp_path}/w.db"), BERLIN, time.time)
    t = utc(2025, 1, 1)
    prev_day, prev_reset = quota.window(t)
    while t < utc(2026, 1, 1):
        t += 1800
        day, reset = quota.window(t)
        assert t < reset <= t + 25 * 3600
        if t >= prev_reset:
            assert day > prev_day and reset > prev_reset
        else:
            assert (day, reset) == (prev_day, prev_reset)
        prev_day, prev_reset = day, reset


# --------------------------------------------------------------------------- counting


async def test_consume_counts_and_reports(db: Database, clock: FakeClock) -> None:
    who = await make_user(db, clock)
    quota = QuotaService(db, QuotaSettings(daily_requests=3), clock)
    day, reset = quota.window(clock())
    states = [await quota.consume(who) for _ in range(3)]
    assert [s.allowed for s in states] == [True, True, True]
    assert [s.remaining for s in states] == [2, 1, 0]
    assert all((s.limit, s.day, s.reset_at) == (3, day, reset) for s in states)
    refused = await quota.consume(who)
    assert (refused.allowed, refused.remaining, refused.reason, refused.limit) == (
        False, 0, "requests", 3)
    assert refused.reset_at == reset
    assert await stored(db, who, day) == (3, 0)  # a refusal is not counted
    peek = await quota.peek(who)
    assert (peek.remaining, peek.limit, peek.day) == (0, 3, day)


async def test_users_are_counted_separately(db: Database, clock: FakeClock) -> None:
    alice = await make_user(db, clock, "alice")
    bob = await make_user(db, clock, "bob")
    quota = QuotaService(db, QuotaSettings(daily_requests=1), clock)
    assert (await quota.consume(alice)).allowed
    assert not (await quota.consume(alice)).allowed
    assert (await quota.consume(bob)).allowed


async def test_user_limit_overrides_default(db: Database, clock: FakeClock) -> None:
    quota = QuotaService(db, QuotaSettings(daily_requests=2), clock)
    more = await make_user(db, clock, "more", daily_request_limit=4)
    less = await make_user(db, clock, "less", daily_request_limit=1)
    assert [(await quota.consume(more)).allowed for _ in range(5)] == [True] * 4 + [False]
    assert [(await quota.consume(less)).allowed for _ in range(2)] == [True, False]
    assert (await quota.peek(more)).limit == 4


async def test_limit_zero_refuses(db: Database, clock: FakeClock) -> None:
    zero = await make_user(db, clock, "zero", daily_request_limit=0)
    quota = QuotaService(db, QuotaSettings(daily_requests=500), clock)
    state = await quota.consume(zero)
    assert (state.allowed, state.limit, state.remaining, state.reason) == (False, 0, 0,
                                                                            "requests")
    default = await make_user(db, clock, "default")
    none_allowed = QuotaService(db, QuotaSettings(daily_requests=0), clock)
    assert not (await none_allowed.consume(default)).allowed
    assert await stored(db, default, state.day) is None


async def test_token_limit(db: Database, clock: FakeClock) -> None:
    who = await make_user(db, clock)
    quota = QuotaService(db, QuotaSettings(daily_requests=100, daily_tokens=50), clock)
    first = await quota.consume(who)
    assert first.allowed
    await quota.add_tokens(who, first.day, 49)
    assert (await quota.consume(who)).allowed  # 49 < 50
    await quota.add_tokens(who, first.day, 1)
    await quota.add_tokens(who, first.day, 0)  # nothing to charge
    refused = await quota.consume(who)
    assert not refused.allowed and refused.reason == "tokens"
    assert await stored(db, who, first.day) == (2, 50)
    # A per-user token limit overrides the default.
    big = await make_user(db, clock, "big", daily_token_limit=1000)
    state = await quota.consume(big)
    await quota.add_tokens(big, state.day, 999)
    assert (await quota.consume(big)).allowed
    await quota.add_tokens(big, state.day, 1)
    assert (await quota.consume(big)).reason == "tokens"


async def test_day_rolls_over(db: Database, clock: FakeClock) -> None:
    who = await make_user(db, clock)
    quota = QuotaService(db, QuotaSettings(daily_requests=1, daily_tokens=10,
                                           timezone="Europe/Berlin", reset_hour=4), clock)
    state = await quota.consume(who)
    await quota.add_tokens(who, state.day, 10)
    refused = await quota.consume(who)
    assert not refused.allowed
    clock.now = refused.reset_at - 1
    assert not (await quota.consume(who)).allowed
    clock.now = refused.reset_at
    again = await quota.consume(who)
    assert again.allowed and again.day > state.day and again.reset_at > state.reset_at
    assert again.remaining == 0
    assert await stored(db, who, state.day) == (1, 10)  # yesterday is kept as it was
    assert await stored(db, who, again.day) == (1, 0)


# --------------------------------------------------------------------------- the race

LIMIT = 500
CALLS = 600


async def test_concurrent_consumes_never_exceed_the_limit(db_url: str, clock: FakeClock) -> None:
    async with Database(db_url, pool_size=20) as db:
        await db.upgrade()
        who = await make_user(db, clock, daily_request_limit=LIMIT)
        quota = QuotaService(db, QuotaSettings(), clock)
        states = await asyncio.gather(*(quota.consume(who) for _ in range(CALLS)))
        assert sum(s.allowed for s in states) == LIMIT
        assert sorted(s.remaining for s in states if s.allowed) == list(range(LIMIT))
        assert all(s.reason == "requests" for s in states if not s.allowed)
        assert await stored(db, who, states[0].day) == (LIMIT, 0)


async def test_two_processes_share_one_limit(postgres: PostgresServer, clock: FakeClock) -> None:
    url = await postgres.acreate_database()
    async with Database(url) as db:
        await db.upgrade()
        who = await make_user(db, clock, daily_request_limit=LIMIT)
        cmd = [sys.executable, str(SUPPORT / "quota_worker.py"), url, str(who.user_id),
               str(LIMIT), repr(clock()), str(CALLS // 2)]
        procs = [await asyncio.create_subprocess_exec(
            *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err.decode()
        counts = [int(out.decode().strip()) for out, _ in outs]
        assert sum(counts) == LIMIT, counts
        assert all(c > 0 for c in counts), counts  # both really raced
        day, _ = QuotaService(db, QuotaSettings(), clock).window(clock())
        assert await stored(db, who, day) == (LIMIT, 0)


# --------------------------------------------------------------------------- two daemons


def _daemon_env(url: str, data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEKD_")}
    env.update({
        "DEEPSEEKD_STORE__URL": url,
        "DEEPSEEKD_DATA_DIR": str(data_dir),
        "DEEPSEEKD_SERVER__PORT": str(port),
        "DEEPSEEKD_WARMUP__REQUESTS": "1",
        "DEEPSEEKD_WARMUP__MAX_TOKENS": "2",
        # One user races 600 requests at once: no per-identity cap here.
        "DEEPSEEKD_SERVER__MAX_CONCURRENT_PER_USER": "0",
    })
    return env


async def _wait_ready(session: aiohttp.ClientSession, base: str, proc: subprocess.Popen,
                      log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"daemon exited {proc.returncode}:\n{log.read_text()}"
        try:
            async with session.get(base + "/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, f"{base} not ready:\n{log.read_text()}"
        await asyncio.sleep(0.1)


async def test_two_daemons_share_one_limit_over_http(postgres: PostgresServer,
                                                     tmp_path: Path) -> None:
    """Like two hosts behind a balancer: one PostgreSQL, each daemon with its own data dir
    holding a copy of the one master key, the database set up as `deepseekd init` leaves it."""
    url = await postgres.acreate_database()
    data_dirs = [tmp_path / "d0", tmp_path / "d1"]
    key_file = create_master_key(data_dirs[0] / "keys", 1)
    (data_dirs[1] / "keys").mkdir(parents=True, mode=0o700)
    shutil.copy2(key_file, data_dirs[1] / "keys" / key_file.name)
    async with Database(url) as db:
        await db.upgrade()
        keys = KeyService(db, Keyring.for_data_dir(data_dirs[0]), data_dirs[0] / "keys", time.time)
        await keys.check()
        audit = AuditLog(db, keys.cached_audit_key, time.time)
        accounts = make_accounts(db, time.time, audit)
        new = await accounts.create_user("racer", "user", daily_request_limit=LIMIT)

    procs: list[tuple[subprocess.Popen, Path]] = []
    bases = []
    try:
        for i, data in enumerate(data_dirs):
            port = free_port()
            log = tmp_path / f"daemon{i}.log"
            with open(log, "wb") as fh:
                proc = subprocess.Popen(
                    [sys.executable, str(SUPPORT / "fake_daemon.py")],
                    env=_daemon_env(url, data, port), cwd=data,
                    stdout=fh, stderr=subprocess.STDOUT,
                )
            procs.append((proc, log))
            bases.append(f"http://127.0.0.1:{port}")

        headers = {"Authorization": f"Bearer {new.api_key}"}
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100),
                                          timeout=aiohttp.ClientTimeout(total=120))
                    for _ in bases]
        try:
            for session, base, (proc, log) in zip(sessions, bases, procs):
                await _wait_ready(session, base, proc, log)

            async def one(i: int) -> tuple[int, Any]:
                session, base = sessions[i % 2], bases[i % 2]
                async with session.post(base + "/v1/chat/completions", json=body,
                                        headers=headers) as resp:
                    await resp.read()
                    return resp.status, resp.headers

            results = await asyncio.gather(*(one(i) for i in range(CALLS)))
        finally:
            for session in sessions:
                await session.close()

        statuses = [s for s, _ in results]
        assert statuses.count(200) == LIMIT, {s: statuses.count(s) for s in set(statuses)}
        assert statuses.count(429) == CALLS - LIMIT
        per_daemon = [sum(1 for i, s in enumerate(statuses) if s == 200 and i % 2 == d)
                      for d in (0, 1)]
        assert all(n > 0 for n in per_daemon), per_daemon
        for status, h in results:
            if status == 429:
                assert int(h["Retry-After"]) >= 1
                assert h["X-RateLimit-Remaining"] == "0"
                assert h["X-RateLimit-Limit"] == str(LIMIT)
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log in procs:
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
            assert code == 0, f"daemon exited {code}:\n{log.read_text()}"

    # Both daemons appended to the one audit chain at once: it must still verify.
    async with Database(url) as db:
        keys = KeyService(db, Keyring.for_data_dir(data_dirs[0]), data_dirs[0] / "keys", time.time)
        await keys.check()
        result = await AuditLog(db, keys.cached_audit_key, time.time).verify()
        assert result.ok, result.as_json()
        who = await make_accounts(db, time.time).authenticate_key(new.api_key)
        assert who is not None
        assert (await QuotaService(db, QuotaSettings(), time.time).peek(who)).remaining == 0
