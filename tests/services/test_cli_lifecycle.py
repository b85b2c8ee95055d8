"""The account lifecycle and the anchor check from the command line: `user unlock`,
`user reset-password`, `user enable`, `audit verify --expect-head` (one-line errors, JSON
output, audited)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepseekd.security.keyring import create_master_key

REPO = Path(__file__).resolve().parents[2]


def cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DEEPSEEKD_") and k != "CREDENTIALS_DIRECTORY"}
    env["DEEPSEEKD_DATA_DIR"] = str(data)
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "deepseekd", *args], env=env,
                          cwd=data.parent, capture_output=True, text=True, timeout=120)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    create_master_key(d / "keys", 1)
    assert cli(d, "migrate").returncode == 0
    return d


def test_unlock_reset_enable(data: Path) -> None:
    added = json.loads(cli(data, "user", "add", "nurse", "--role", "user").stdout)
    reset = cli(data, "user", "reset-password", "nurse")
    assert reset.returncode == 0, reset.stderr
    out = json.loads(reset.stdout)
    assert out["must_change_password"] is True and out["password"] != added["password"]
    assert json.loads(cli(data, "user", "unlock", "nurse").stdout) == {
        "name": "nurse", "locks_lifted": 0}
    assert cli(data, "user", "disable", "nurse").returncode == 0
    assert json.loads(cli(data, "user", "enable", "nurse").stdout) == {
        "name": "nurse", "disabled": False}
    missing = cli(data, "user", "unlock", "ghost")
    assert missing.returncode == 2 and missing.stderr.startswith("deepseekd: ")
    assert "Traceback" not in missing.stderr
    audit = json.loads(cli(data, "audit", "verify").stdout)
    assert audit["ok"]


def test_reset_totp_prints_a_new_second_factor_for_admins_only(data: Path) -> None:
    added = json.loads(cli(data, "user", "add", "ops", "--role", "admin").stdout)
    reset = cli(data, "user", "reset-totp", "ops")
    assert reset.returncode == 0, reset.stderr
    uri = json.loads(reset.stdout)["totp_uri"]
    assert uri.startswith("otpauth://totp/") and uri != added["totp_uri"]
    cli(data, "user", "add", "nurse", "--role", "user")
    refused = cli(data, "user", "reset-totp", "nurse")
    assert refused.returncode != 0 and "only admins" in refused.stderr


def test_audit_verify_expect_head(data: Path) -> None:
    cli(data, "user", "add", "nurse", "--role", "user")
    head = json.loads(cli(data, "audit", "verify").stdout)
    anchor = f"{head['head_id']}:{head['head_hash']}"
    good = cli(data, "audit", "verify", "--expect-head", anchor)
    assert good.returncode == 0, good.stderr
    wrong = cli(data, "audit", "verify", "--expect-head", f"{head['head_id']}:{'0' * 64}")
    assert wrong.returncode == 1 and "rewritten" in wrong.stderr
    bad = cli(data, "audit", "verify", "--expect-head", "not-an-anchor")
    assert bad.returncode == 2 and "ID:HASH" in bad.stderr
