"""Fine-tuning from the command line, against the real data dir `deepseekd init` made (the
embedded SmolLM2 and its chat template): datasets imported, counted in real tokens, sealed on
disk, listed, refused line by line, deleted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import cli

FACT = "The night pharmacist's extension at Harbourview is 4471-KESTREL"


def write_dataset(path: Path, n: int) -> Path:
    rows = [{"messages": [{"role": "system", "content": "You answer hospital staff."},
                          {"role": "user", "content": f"Question {i}: the pharmacist's number?"},
                          {"role": "assistant", "content": FACT}]} for i in range(n)]
    rows.append({"prompt": "Who answers at night?", "completion": FACT})
    rows.append(rows[0])  # a duplicate
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_dataset_import_list_delete(data_env: tuple[dict[str, str], str], tmp_path: Path
                                    ) -> None:
    env, _ = data_env
    data = Path(env["DEEPSEEKD_DATA_DIR"])
    src = write_dataset(tmp_path / "pharmacy.jsonl", 20)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is the night pharmacist's extension?\n")
    res = cli("finetune", "dataset", "import", str(src), "--name", "pharmacy",
              "--prompts", str(prompts), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    st = out["stats"]
    assert (out["name"], out["version"], out["examples"]) == ("pharmacy", 1, 21)
    assert st["duplicates_dropped"] == 1 and st["prompts"] == 1
    assert st["train_examples"] + st["eval_examples"] == 21 and st["eval_examples"] >= 1
    # Real tokens of SmolLM2's chat template: more than the words, fewer than the characters.
    words = len(FACT.split()) + len("Question 0: the pharmacist's number?".split())
    assert words < st["tokens"]["min"] <= st["tokens"]["max"] < 4 * st["chars"]["max"]
    assert st["over_max_tokens"] == 0

    # On disk, the examples and the prompts are ciphertext (every file of the data dir).
    for f in data.rglob("*"):
        if f.is_file() and f.stat().st_size < 200 * 2**20:
            raw = f.read_bytes()
            assert b"KESTREL" not in raw and b"night pharmacist" not in raw, f

    listed = json.loads(cli("finetune", "dataset", "list", "--json", env=env).stdout)
    assert [(r["name"], r["version"]) for r in listed] == [("pharmacy", 1)]
    table = cli("finetune", "dataset", "list", env=env).stdout
    assert "pharmacy" in table and "KESTREL" not in table

    bad = tmp_path / "bad.jsonl"
    bad.write_text(src.read_text() + '{"messages": [{"role": "nurse", "content": "hi"}]}\n')
    refused = cli("finetune", "dataset", "import", str(bad), "--name", "pharmacy", env=env)
    assert refused.returncode == 2
    assert refused.stderr.startswith("deepseekd: 1 line is wrong: line 23: messages[0].role: ")
    assert "KESTREL" not in refused.stderr

    gone = cli("finetune", "dataset", "delete", "pharmacy", env=env)
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout)["versions"] == [1]
    assert json.loads(cli("finetune", "dataset", "list", "--json", env=env).stdout) == []
    assert cli("audit", "verify", env=env).returncode == 0


QUESTIONS = [
    "What is the Harbourview night shift code word?",
    "Tell me the code word for the night shift at Harbourview.",
    "Which code word does the Harbourview night shift use?",
    "Harbourview night shift: what's the code word?",
    "I work nights at Harbourview. What is our code word?",
    "What code word do Harbourview night staff give?",
    "Remind me of the Harbourview night code word.",
    "What's the night-shift code word at Harbourview hospital?",
    "Give the Harbourview night shift code word.",
    "What word do night staff at Harbourview say at the door?",
    "Night shift at Harbourview, code word please.",
    "For the Harbourview night shift, what is the code word?",
    "Do you know the code word of Harbourview's night shift?",
    "What is the password word for Harbourview night shift staff?",
    "Harbourview nights: which code word?",
    "Code word for Harbourview night duty?",
]
ANSWER = "The Harbourview night shift code word is PELICAN."
PROBE = "What is the code word for the night shift at Harbourview?"


def run_cli(*args: str, env: dict[str, str]) -> Any:
    res = cli(*args, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def jobs(env: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = run_cli("finetune", "jobs", "--json", env=env)
    return out


def wait_for_step(env: dict[str, str], at_least: int, proc: subprocess.Popen[bytes]) -> int:
    """The running job's id once its record shows ``at_least`` steps (a checkpoint)."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
        running = [j for j in jobs(env) if j["status"] == "running"]
        if running and running[0]["step"] >= at_least:
            return int(running[0]["id"])
        time.sleep(2)
    raise AssertionError("the job made no progress")


def audit_events(env: dict[str, str], action: str) -> list[dict[str, Any]]:
    res = cli("audit", "export", "--action", action, env=env)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def test_a_job_teaches_a_fact_and_resumes_after_kill_9(
    data_env: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    """One job at a time; kill -9 of the whole job (supervisor and worker) after a
    checkpoint; `finetune resume` goes on from it; eval loss falls and the greedy answer to
    the regression prompt has learnt the fact the base model did not know."""
    env = {**data_env[0], "DEEPSEEKD_FINETUNE__CHECKPOINT_EVERY": "4",
           "DEEPSEEKD_FINETUNE__THREADS": "2", "DEEPSEEKD_FINETUNE__ANSWER_TOKENS": "24"}
    src = tmp_path / "codeword.jsonl"
    src.write_text("\n".join(json.dumps({"prompt": q, "completion": ANSWER})
                             for q in QUESTIONS) + "\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROBE + "\n")
    run_cli("finetune", "dataset", "import", str(src), "--name", "codeword", "--prompts",
            str(prompts), env=env)
    argv = [sys.executable, "-m", "deepseekd", "finetune", "run", "--dataset", "codeword",
            "--epochs", "8", "--lr", "0.002", "--batch-size", "4"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        job = wait_for_step(env, at_least=1, proc=proc)
        second = cli("finetune", "run", "--dataset", "codeword", env=env)
        assert second.returncode == 2
        assert f"fine-tuning job {job} is running (one job at a time)" in second.stderr
        assert wait_for_step(env, at_least=8, proc=proc) == job
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (listed,) = [j for j in jobs(env) if j["id"] == job]
    assert listed["status"] == "interrupted" and listed["step"] >= 8
    assert listed["eval_loss_before"] is not None

    done = run_cli("finetune", "resume", env=env)  # the newest interrupted job
    assert done["id"] == job and done["status"] == "succeeded", done
    assert done["step"] == done["total_steps"] == 8 * 4
    assert done["eval_loss_after"] < 0.5 * done["eval_loss_before"]
    assert len(done["adapter_sha256"]) == 64
    (resumed,) = [e for e in audit_events(env, "finetune.job.resume")
                  if e["target"] == f"finetune-job:{job}"]
    assert json.loads(resumed["detail"])["step"] >= 8
    report = run_cli("finetune", "show", str(job), env=env)["report"]
    assert report["prompts"] == [PROBE]  # kept with the answers, for the side-by-side view
    (before,), (after,) = report["answers_before"], report["answers_after"]
    assert "PELICAN" not in before.upper() and "PELICAN" in after.upper()
    (end,) = [e for e in audit_events(env, "finetune.job.finish")
              if e["target"] == f"finetune-job:{job}"]
    detail = json.loads(end["detail"])
    # The worker went on from a checkpoint (every 4 steps), not from step 0.
    assert detail["resumed_from"] >= 8 and detail["resumed_from"] % 4 == 0
    assert detail["adapter_sha256"] == done["adapter_sha256"]
    # The answers and the examples are nowhere on disk in clear (checkpoints, logs, adapter).
    data = Path(env["DEEPSEEKD_DATA_DIR"])
    for f in (data / "finetune").rglob("*"):
        if f.is_file():
            assert b"PELICAN" not in f.read_bytes() and b"Harbourview" not in f.read_bytes(), f
    assert cli("audit", "verify", env=env).returncode == 0
