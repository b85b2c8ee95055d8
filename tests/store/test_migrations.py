"""Alembic migrations on SQLite and PostgreSQL, the newer-schema refusal, the ``migrate`` CLI,
and the SQLite safety settings."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from deepseekd.config import QuotaSettings
from deepseekd.security import passwords, totp
from deepseekd.security.keyring import create_master_key
from deepseekd.security.apikeys import generate_api_key, hash_api_key
from tests.support.services import make_accounts
from deepseekd.store.db import Database, SchemaError, alembic_config
from deepseekd.services.usage import QuotaService
from deepseekd.store.schema import Base
from tests.db_fixtures import FakeClock

SCRIPT = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://"))
HEAD = SCRIPT.get_current_head()
PREVIOUS = SCRIPT.get_revision(HEAD).down_revision
# Oldest first; every revision the head can be reached from.
CHAIN = [r.revision for r in reversed(list(SCRIPT.walk_revisions()))]
FIRST = CHAIN[0]


async def upgrade_to(db: Database, target: str) -> None:
    """``alembic upgrade <target>`` as Database.upgrade runs it."""
    await db.upgrade(target)


async def stamp(db: Database, revision: str) -> None:
    await db.write("test.stamp", lambda s: s.execute(
        text("UPDATE alembic_version SET version_num = :v"), {"v": revision}))


def test_head_is_a_single_linear_chain() -> None:
    assert HEAD is not None and len(SCRIPT.get_heads()) == 1
    assert PREVIOUS is not None
    assert FIRST == "0001" and SCRIPT.get_revision(FIRST).down_revision is None
    assert CHAIN[-1] == HEAD and len(set(CHAIN)) == len(CHAIN)


async def test_upgrade_from_empty_reaches_head(db_url: str) -> None:
    async with Database(db_url) as db:
        assert await db.current_revision() is None
        assert await db.upgrade() == (None, HEAD)
        assert await db.current_revision() == HEAD
        assert await db.upgrade() == (HEAD, HEAD)  # idempotent
        tables = await db.read("test", lambda s: set(inspect(s.connection()).get_table_names()))
        # The migrations build exactly what schema.py describes.
        diff = await db.read("test", lambda s: compare_metadata(
            MigrationContext.configure(s.connection(), opts={"compare_type": True}),
            Base.metadata))
        assert tables == set(Base.metadata.tables) | {"alembic_version"}
        if db.is_sqlite:
            # SQLite does not enforce VARCHAR lengths, and widening one would rebuild a parent
            # table (see migrations/env.py): only PostgreSQL gets users.totp_secret widened.
            diff = [d for d in diff if not (isinstance(d, list) and d[0][0] == "modify_type"
                                            and d[0][2:4] == ("users", "totp_secret"))]
        assert diff == []


@pytest.mark.parametrize("start", CHAIN[:-1])  # 0001, ..., the revision before head
async def test_upgrade_from_earlier_revision_keeps_data(db_url: str, clock: FakeClock,
                                                        start: str) -> None:
    """A user and key written (raw SQL, the first schema's columns) at an earlier revision
    survive the upgrade to head and still work: key, login with password and TOTP, quota."""
    key = generate_api_key()
    password = passwords.generate_password()
    secret = totp.new_secret()
    async with Database(db_url) as db:
        await upgrade_to(db, start)
        assert await db.current_revision() == start
        pw_hash = passwords.hash_password(password)

        def old_rows(s: Any) -> None:
            s.execute(text(
                "INSERT INTO users (name, role, password_hash, totp_secret, disabled, "
                "daily_request_limit, created_at) VALUES "
                "('old', 'admin', :pw, :secret, :disabled, 2, :now)"
            ), {"pw": pw_hash, "secret": secret, "disabled": False, "now": clock()})
            uid = s.execute(text("SELECT id FROM users WHERE name = 'old'")).scalar()
            s.execute(text(
                "INSERT INTO api_keys (user_id, key_hash, prefix, label, created_at) "
                "VALUES (:uid, :h, :p, 'legacy', :now)"
            ), {"uid": uid, "h": hash_api_key(key), "p": key[:10], "now": clock()})

        await db.write("test.old_rows", old_rows)

        assert await db.upgrade() == (start, HEAD)
        assert await db.current_revision() == HEAD

        accounts = make_accounts(db, clock)
        [info] = await accounts.list_users()
        assert (info.name, info.role, info.daily_request_limit, info.active_keys) == (
            "old", "admin", 2, 1)
        who = await accounts.authenticate_key(key)
        assert who is not None and (who.name, who.role) == ("old", "admin")
        # The new tables work for the old user: a session, and the quota counter.
        token, _ = await accounts.login("old", password=password,
                                        code=totp.code_at(secret, clock()))
        assert await accounts.authenticate_session(token) is not None
        quota = QuotaService(db, QuotaSettings(), clock)
        assert [(await quota.consume(who)).allowed for _ in range(3)] == [True, True, False]


async def test_newer_schema_is_refused(db_url: str) -> None:
    async with Database(db_url) as db:
        await db.upgrade()
        await stamp(db, "9999")
        with pytest.raises(SchemaError) as err:
            await db.upgrade()
        msg = str(err.value)
        assert "9999" in msg and "newer" in msg
        assert "downgrades are not supported" in msg
        assert await db.current_revision() == "9999"  # untouched


# --------------------------------------------------------------------------- the CLI


def cli(data_dir: Path, *args: str, url: str = "",
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("DEEPSEEKD_") and k != "CREDENTIALS_DIRECTORY"}
    full["DEEPSEEKD_DATA_DIR"] = str(data_dir)
    if url:
        full["DEEPSEEKD_STORE__URL"] = url
    full.update(env or {})
    # cwd outside the repo: its config/deepseekd.toml must not apply
    return subprocess.run([sys.executable, "-m", "deepseekd", *args], env=full,
                          cwd=data_dir.parent, capture_output=True, text=True, timeout=120)


def master_key(data_dir: Path) -> None:
    """What `deepseekd init` leaves besides the database: the master key file."""
    create_master_key(data_dir / "keys", 1)


async def test_cli_migrate(db_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    url = "" if db_url.startswith("sqlite") else db_url  # SQLite: the file in data_dir
    first = cli(data, "migrate", url=url)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"from": None, "to": HEAD}
    if not url:
        assert (data / "deepseekd.db").is_file()
    again = cli(data, "migrate", url=url)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"from": HEAD, "to": HEAD}

    async with Database(url or f"sqlite+aiosqlite:///{data / 'deepseekd.db'}") as db:
        await stamp(db, "9999")
    newer = cli(data, "migrate", url=url)
    assert newer.returncode == 2
    assert newer.stdout == ""
    assert newer.stderr.startswith("deepseekd: ")
    assert "newer" in newer.stderr and "downgrades are not supported" in newer.stderr
    assert "Traceback" not in newer.stderr


def test_cli_user_add_needs_a_migrated_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    master_key(data)
    refused = cli(data, "user", "add", "bob", "--role", "user")
    assert refused.returncode == 2, refused.stderr
    assert refused.stdout == ""
    assert refused.stderr.startswith("deepseekd: ")
    assert "deepseekd migrate" in refused.stderr and "Traceback" not in refused.stderr
    assert not (data / "deepseekd.db").exists()  # a refused command leaves nothing behind

    assert cli(data, "migrate").returncode == 0
    ok = cli(data, "user", "add", "bob", "--role", "user", "--daily-limit", "7")
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["name"] == "bob" and out["api_key"].startswith("dsk-")
    dup = cli(data, "user", "add", "bob", "--role", "user")
    assert dup.returncode == 2 and "already exists" in dup.stderr


def test_cli_user_add_without_master_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    refused = cli(data, "user", "add", "bob", "--role", "user")
    assert refused.returncode == 2
    assert refused.stdout == "" and "Traceback" not in refused.stderr
    assert "deepseekd init" in refused.stderr


async def test_cli_user_add_on_an_old_schema(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    master_key(data)
    async with Database(f"sqlite+aiosqlite:///{data / 'deepseekd.db'}") as db:
        await upgrade_to(db, PREVIOUS)
    refused = cli(data, "user", "add", "bob", "--role", "user")
    assert refused.returncode == 2
    assert PREVIOUS in refused.stderr and "deepseekd migrate" in refused.stderr


def test_cli_user_add_without_a_data_dir(tmp_path: Path) -> None:
    """The master key from systemd credentials, no data dir yet: a one-line error."""
    creds = tmp_path / "creds"
    create_master_key(creds, 1)
    refused = cli(tmp_path / "missing", "user", "add", "bob", "--role", "user",
                  env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert "Traceback" not in refused.stderr
    assert refused.returncode == 2
    assert "deepseekd migrate" in refused.stderr or "deepseekd init" in refused.stderr


# --------------------------------------------------------------------------- SQLite safety


async def test_sqlite_is_wal_synchronous_full_with_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with Database(f"sqlite+aiosqlite:///{path}", busy_timeout_ms=1234) as db:
        await db.upgrade()
        def pragmas(s: Any) -> dict[str, Any]:
            return {name: s.connection().exec_driver_sql(f"PRAGMA {name}").scalar()
                    for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")}

        pragma = await db.read("test", pragmas)
        assert pragma == {"journal_mode": "wal", "synchronous": 2, "busy_timeout": 1234,
                          "foreign_keys": 1}
        # The writer's connection too.
        assert await db.write("test", pragmas) == pragma
    # WAL is a property of the file: a plain connection sees it too.
    with sqlite3.connect(path) as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    plain.close()


async def test_many_connections_switching_a_fresh_file_to_wal_at_once(tmp_path: Path) -> None:
    """Switching a new file to WAL from two connections at once makes SQLite refuse one of them
    without waiting (about one start in ten for two daemons on a new file); the daemon waits
    its turn instead of failing to start."""

    async def open_and_read(path: Path) -> str:
        async with Database(f"sqlite+aiosqlite:///{path}") as db:
            return str(await db.read("test", lambda s: s.connection().exec_driver_sql(
                "PRAGMA journal_mode").scalar()))

    for round_ in range(15):
        path = tmp_path / f"fresh-{round_}.db"
        modes = await asyncio.gather(*(open_and_read(path) for _ in range(4)))
        assert modes == ["wal"] * 4


async def test_sqlite_default_busy_timeout(tmp_path: Path) -> None:
    async with Database(f"sqlite+aiosqlite:///{tmp_path}/t.db") as db:
        assert await db.read("test", lambda s: s.connection().exec_driver_sql(
            "PRAGMA busy_timeout").scalar()) == 5000


# --------------------------------------------------------------------------- concurrent start


async def test_two_processes_migrating_at_once(db_url: str) -> None:
    """Two daemons starting on one fresh PostgreSQL, or `deepseekd migrate` beside a starting
    daemon: one migrates, the other waits and finds the schema at head."""
    worker = Path(__file__).resolve().parents[1] / "support" / "migrate_worker.py"
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, str(worker), db_url, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.wait_for(p.stdout.readline(), 60)
            if line.strip() != b"ready":  # it died before the cue: say why
                assert p.stderr is not None
                pytest.fail((await p.stderr.read()).decode()[-2000:])
        for p in procs:  # the cue, as close together as it gets
            assert p.stdin is not None
            p.stdin.write(b"go\n")
        for p in procs:
            assert p.stdin is not None
            await p.stdin.drain()
        outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    results = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()[-2000:]
        results.append(tuple(json.loads(out)))
    assert sorted(results, key=str) == sorted([(None, HEAD), (HEAD, HEAD)], key=str)
    async with Database(db_url) as db:
        assert await db.current_revision() == HEAD
