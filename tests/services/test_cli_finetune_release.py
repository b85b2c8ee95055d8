"""Promotion and rollback from the command line: the admin at the keyboard names themselves
and proves it with a fresh code of their own; the version is registered for the daemon to
take up (tests/api/test_finetune_release.py shows the daemon taking it up); refusals exit 2
with one line."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyotp

from deepseekd.config import Settings
from deepseekd.engine import files
from deepseekd.security.keyring import create_master_key
from deepseekd.services.container import open_services
from deepseekd.store import finetune as repo
from tests.api.test_lora import make_adapter

REPO = Path(__file__).resolve().parents[2]
NAMES = ("adapter_config.json", "adapter_model.safetensors")


def cli(data: Path, *args: str, lora: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DEEPSEEKD_") and k != "CREDENTIALS_DIRECTORY"}
    env.update(DEEPSEEKD_DATA_DIR=str(data), PYTHONPATH=str(REPO),
               DEEPSEEKD_LORA__ENABLED="true" if lora else "false")
    return subprocess.run([sys.executable, "-m", "deepseekd", *args], env=env,
                          cwd=data.parent, capture_output=True, text=True, timeout=120)


async def succeeded_job(data: Path, dropout: float) -> int:
    settings = dataclasses.replace(Settings(), data_dir=data)
    async with open_services(settings) as svc:
        now = time.time()

        def write(s: Any) -> int:
            row = repo.add_job(s, dataset_id=1, dataset_name="ward", dataset_version=1,
                               base_model=settings.engine.model, params="{}",
                               status="succeeded", step=8, total_steps=8, started_at=now,
                               updated_at=now, host="test")
            return int(row.id)

        job = await svc.db.write("test.job", write)
        adapter = make_adapter(svc.releases.jobs_dir / str(job) / "adapter",
                               lora_dropout=dropout)
        sha = files.digest({n: {"sha256": files.sha256_file(adapter / n)} for n in NAMES})

        def finish(s: Any) -> None:
            repo.job(s, job).adapter_sha256 = sha  # type: ignore[union-attr]

        await svc.db.write("test.job", finish)
        return job


def test_promote_list_and_roll_back_from_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    create_master_key(data / "keys", 1)
    assert cli(data, "migrate").returncode == 0
    ops = json.loads(cli(data, "user", "add", "ops", "--role", "admin").stdout)
    otp = pyotp.parse_uri(ops["totp_uri"])
    assert isinstance(otp, pyotp.TOTP)
    first, second = (asyncio.run(succeeded_job(data, d)) for d in (0.0, 0.1))

    promote = ("finetune", "promote", str(first), "--name", "ward", "--admin", "ops")
    wrong = cli(data, *promote, "--totp", "000000")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    off = cli(data, *promote, "--totp", otp.now(), lora=False)
    assert off.returncode == 2 and "[lora] enabled = true" in off.stderr
    nobody = cli(data, "finetune", "promote", str(first), "--name", "ward", "--admin", "nobody",
                 "--totp", "123456")
    assert nobody.returncode == 2 and "no active user named 'nobody'" in nobody.stderr
    assert json.loads(cli(data, "finetune", "releases", "--json").stdout) == []

    v1 = cli(data, *promote, "--totp", otp.now())
    assert v1.returncode == 0, v1.stderr
    assert json.loads(v1.stdout)["version"] == 1
    assert "a running daemon serves it within [cluster] sync_interval_s" in v1.stderr
    # Another admin (codes are per person: no wait for the next 30-second step).
    lead = json.loads(cli(data, "user", "add", "lead", "--role", "admin").stdout)
    v2 = cli(data, "finetune", "promote", str(second), "--name", "ward", "--admin", "lead",
             "--totp", pyotp.parse_uri(lead["totp_uri"]).now())
    assert v2.returncode == 0, v2.stderr
    listed = json.loads(cli(data, "finetune", "releases", "--json").stdout)
    assert [(r["version"], r["serving"], r["promoted_by"]) for r in listed] == [
        (2, True, "lead"), (1, False, "ops")]
    table = cli(data, "finetune", "releases").stdout
    assert "ward" in table and "yes" in table

    back = cli(data, "finetune", "rollback", "ward", "--admin", "ops",
               "--totp", otp.at(time.time() + 30))  # a later step than ops' last code
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["previous_version"] == 2
    listed = json.loads(cli(data, "finetune", "releases", "ward", "--json").stdout)
    assert [(r["version"], r["serving"]) for r in listed] == [(2, False), (1, True)]
    events = [json.loads(line) for line in cli(data, "audit", "export").stdout.splitlines()
              if line.strip()]
    mine = [(e["action"], e["actor"], e["client"]) for e in events
            if e["action"].startswith(("finetune.promote", "finetune.rollback"))]
    assert mine == [("finetune.promote", "ops", "cli"), ("finetune.promote", "lead", "cli"),
                    ("finetune.rollback", "ops", "cli")]
    assert cli(data, "audit", "verify").returncode == 0
