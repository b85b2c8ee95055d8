"""End-to-end fixtures: the real daemon as a subprocess, the real vLLM engine, the real model.

One data dir (with the default model imported by the real `deepseekd init`) is shared by
the whole session, and one daemon serves most tests, so the suite pays the model import
and engine start once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.process import DaemonProcess, clean_env, free_port, spawn, wait_ready

BOOT_TIMEOUT_S = 420  # compile-free (eager) start is ~30 s; the machine may be busy


SECRETS: set[str] = set()
"""Every API key, password and TOTP secret the CLI printed in this session: the last test
checks that none of them reached the daemon's logs."""


def _harvest(stdout: str) -> None:
    try:
        data = json.loads(stdout)
    except ValueError:
        return
    if isinstance(data, dict):
        for field in ("api_key", "password"):
            if isinstance(data.get(field), str):
                SECRETS.add(data[field])
        uri = data.get("totp_uri")
        if isinstance(uri, str) and "secret=" in uri:
            SECRETS.add(uri.split("secret=")[1].split("&")[0])


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "deepseekd", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    _harvest(res.stdout)
    return res


@dataclass
class Daemon(DaemonProcess):
    key: str
    env: dict[str, str]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="session")
def data_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], str]:
    """A data dir initialised by the real `deepseekd init`; returns (env, admin key)."""
    data = tmp_path_factory.mktemp("deepseekd-data")
    env = clean_env(
        DEEPSEEKD_DATA_DIR=str(data),
        DEEPSEEKD_ENGINE__ENFORCE_EAGER="true",  # tests start fast; production compiles
        DEEPSEEKD_ENGINE__KV_CACHE_GIB="1",
        DEEPSEEKD_ENGINE__MAX_MODEL_LEN="2048",
    )
    res = cli("init", env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    creds = json.loads(res.stdout)
    return env, creds["api_key"]


def start_daemon(env: dict[str, str], key: str, log_path: Path, **overrides: str) -> Daemon:
    """The real `deepseekd serve` with ``env`` (and ``overrides``); ready when this returns."""
    port = free_port()
    env = {**env, "DEEPSEEKD_SERVER__PORT": str(port), **overrides}
    proc = spawn([sys.executable, "-m", "deepseekd", "serve"], env, log_path)
    daemon = Daemon(f"http://127.0.0.1:{port}", proc, log_path, key, env)
    wait_ready(daemon, BOOT_TIMEOUT_S, poll=0.5)
    return daemon


@pytest.fixture(scope="session")
def daemon(data_env: tuple[dict[str, str], str], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Daemon]:
    env, key = data_env
    d = start_daemon(env, key, tmp_path_factory.mktemp("logs") / "daemon.log")
    try:
        yield d
    finally:
        d.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
