"""Break-glass from the command line, for when the network is down: the person at the
keyboard names themselves and proves it with their own code; the queue, stop and review;
everything on the audit chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyotp
import pytest

from deepseekd.security.keyring import create_master_key

REPO = Path(__file__).resolve().parents[2]
START = ("breakglass", "start", "ops", "--scope", "read_history", "--target", "nurse",
         "--reason-code", "treatment", "--reason", "Network down; patient notes needed")


def cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DEEPSEEKD_") and k != "CREDENTIALS_DIRECTORY"}
    env.update(DEEPSEEKD_DATA_DIR=str(data), PYTHONPATH=str(REPO),
               DEEPSEEKD_BREAKGLASS__ALLOWED="ops")
    return subprocess.run([sys.executable, "-m", "deepseekd", *args], env=env,
                          cwd=data.parent, capture_output=True, text=True, timeout=120)


def fresh_code(uri: str) -> str:
    """A code of the next 30-second step (each step's code is good once)."""
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    time.sleep(30 - time.time() % 30 + 0.5)
    return totp.now()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    create_master_key(d / "keys", 1)
    assert cli(d, "migrate").returncode == 0
    return d


def test_start_list_stop_review_from_the_command_line(data: Path) -> None:
    ops = json.loads(cli(data, "user", "add", "ops", "--role", "admin").stdout)
    cli(data, "user", "add", "nurse", "--role", "user")
    cli(data, "user", "add", "other", "--role", "admin")
    wrong = cli(data, *START, "--totp", "000000")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    refused = cli(data, "breakglass", "start", "other", "--scope", "lift_quota", "--target",
                  "nurse", "--reason-code", "other", "--reason", "x", "--totp", "123456")
    assert refused.returncode == 2 and "not allowed" in refused.stderr

    started = cli(data, *START, "--minutes", "30", "--totp", fresh_code(ops["totp_uri"]))
    assert started.returncode == 0, started.stderr
    row = json.loads(started.stdout)
    assert (row["actor"], row["scope"], row["target"], row["active"]) == (
        "ops", "read_history", "nurse", True)
    assert row["expires_at"] - row["started_at"] == 30 * 60

    early = cli(data, "breakglass", "review", str(row["id"]), "--comment", "fine")
    assert early.returncode == 2 and "still active" in early.stderr
    stopped = json.loads(cli(data, "breakglass", "stop", str(row["id"])).stdout)
    assert (stopped["active"], stopped["end_reason"]) == (False, "stopped")
    queue = json.loads(cli(data, "breakglass", "list").stdout)
    assert [q["id"] for q in queue] == [row["id"]]
    assert [e["action"] for e in queue[0]["events"]] == ["breakglass.start", "breakglass.stop"]
    assert queue[0]["events"][1]["actor"].startswith("cli")
    reviewed = cli(data, "breakglass", "review", str(row["id"]), "--comment", "Justified")
    assert reviewed.returncode == 0, reviewed.stderr
    assert json.loads(reviewed.stdout)["review_comment"] == "Justified"
    assert json.loads(cli(data, "breakglass", "list").stdout) == []
    assert len(json.loads(cli(data, "breakglass", "list", "--all").stdout)) == 1
    assert json.loads(cli(data, "audit", "verify").stdout)["ok"]
