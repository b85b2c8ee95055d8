"""Setting up two hosts on one PostgreSQL the way the README says, with the real CLI:

* `deepseekd init` on the first host, with a new and empty database, creates master key v1,
  migrates and prints the first admin (it refused with "no master key found" before);
* `init` on a second host without the key refuses, naming what to copy and where, and
  leaves the database as it was;
* with the first host's key file copied, `init` on the second host says it is already
  initialised and `audit verify` there checks the chain the first host started.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests import db_fixtures
from tests.e2e.conftest import cli
from tests.pg import PostgresServer

MODEL_DIR = "models/smollm2-135m-instruct"
pg = db_fixtures.postgres  # the session's PostgreSQL (a fixture, under this name here)


def host(env: dict[str, str], data: Path, url: str) -> dict[str, str]:
    shared = Path(env["DEEPSEEKD_DATA_DIR"])
    return {
        **env,
        "DEEPSEEKD_DATA_DIR": str(data),
        "DEEPSEEKD_STORE__URL": url,
        "DEEPSEEKD_ENGINE__MODEL": str(shared / MODEL_DIR),
    }


def test_first_host_creates_the_key_later_hosts_copy_it(
    data_env: tuple[dict[str, str], str], pg: PostgresServer, tmp_path: Path
) -> None:
    env, _ = data_env
    url = pg.create_database()
    first = host(env, tmp_path / "a", url)
    res = cli("init", env=first)
    assert res.returncode == 0, res.stderr[-3000:]
    admin = json.loads(res.stdout)
    assert admin["role"] == "admin" and admin["api_key"]
    keys_a = tmp_path / "a" / "keys"
    assert sorted(p.name for p in keys_a.iterdir()) == ["master-v1.key"]
    assert (keys_a / "master-v1.key").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "a" / "deepseekd.db").exists()  # the data is in PostgreSQL

    second = host(env, tmp_path / "b", url)
    res = cli("init", env=second)
    assert res.returncode == 2
    assert "copy the master key" in res.stderr and str(tmp_path / "b" / "keys") in res.stderr
    assert not (tmp_path / "b" / "keys").exists() or not any((tmp_path / "b" / "keys").iterdir())

    (tmp_path / "b" / "keys").mkdir(mode=0o700, exist_ok=True)
    shutil.copy2(keys_a / "master-v1.key", tmp_path / "b" / "keys" / "master-v1.key")
    res = cli("init", env=second)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "" and "already initialised" in res.stderr
    verified = cli("audit", "verify", env=second)
    assert verified.returncode == 0, verified.stderr[-3000:]
    assert json.loads(verified.stdout)["ok"] is True
