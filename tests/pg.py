"""A private PostgreSQL cluster for the tests: started once per session, one database per test.

The binaries come from PATH or /usr/lib/postgresql/*/bin (``.ci/run`` installs them); when
they are missing the tests that need PostgreSQL fail, naming what to install. initdb refuses
to run as root, so as root the cluster belongs to the ``postgres`` user and lives in its own
directory directly under /tmp (pytest's temporary directories are 0700 and root's).
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import itertools
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Coroutine, TypeVar

from tests.support.process import free_port

T = TypeVar("T")

MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH nor in "
    "/usr/lib/postgresql/*/bin: install them (Debian: apt-get install postgresql-15; "
    ".ci/run does) to run the PostgreSQL half of the store tests"
)


def find_bindir() -> Path:
    initdb = shutil.which("initdb")
    if initdb:
        real = Path(initdb).resolve().parent
        if (real / "pg_ctl").exists():
            return real
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    for c in candidates:
        if (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise RuntimeError(MISSING)


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a private loop in another thread, so this works both
    from plain code and from inside a running event loop (and never touches the caller's)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=target, name="pg-helper")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class PostgresServer:
    """``server = PostgresServer(); url = server.create_database(); ...; server.stop()``."""

    def __init__(self, *, max_connections: int = 300) -> None:
        self.bindir = find_bindir()
        self.as_root = os.geteuid() == 0
        self.port = free_port()
        self._names = itertools.count(1)
        self._stopped = False
        # mkdtemp makes it 0700; as root it is handed over to postgres below.
        self.datadir = Path(tempfile.mkdtemp(prefix="deepseekd-pg-", dir="/tmp"))
        try:
            if self.as_root:
                shutil.chown(self.datadir, user="postgres", group="postgres")
            self._run("initdb", "-D", str(self.datadir), "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8")
            opts = (f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 "
                    f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                    f"-c max_connections={max_connections}")
            self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.datadir / "log"),
                      "-w", "-t", "60", "-o", opts, "start")
        except BaseException:
            self._cleanup_dir()
            raise
        atexit.register(self.stop)

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/tmp", timeout=120)
        if proc.returncode != 0:
            log = ""
            logfile = self.datadir / "log"
            if logfile.exists():
                log = logfile.read_text(errors="replace")[-4000:]
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}\n{log}"
            )

    # -- databases ---------------------------------------------------------------------

    def url(self, dbname: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{dbname}"

    async def acreate_database(self, name: str | None = None) -> str:
        import asyncpg

        name = name or f"t{os.getpid()}_{next(self._names)}"
        conn = await asyncpg.connect(host="127.0.0.1", port=self.port, user="postgres",
                                     database="postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        return run_in_thread(self.acreate_database(name))

    # -- teardown ----------------------------------------------------------------------

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self._run("pg_ctl", "-D", str(self.datadir), "-w", "-t", "60", "stop", "-m", "fast")
        finally:
            self._cleanup_dir()

    def _cleanup_dir(self) -> None:
        shutil.rmtree(self.datadir, ignore_errors=True)
