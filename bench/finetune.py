"""From a dataset to an adapter serving, timed (part of `make bench`; never a timed test).

On a fresh data dir (`deepseekd init`, the embedded SmolLM2-135M) with the real daemon
serving (LoRA on): import a synthetic dataset of EXAMPLES ward facts (each a question and a
one-sentence answer, about 60 tokens with the chat template), train with the shipped
[finetune] settings except EPOCHS, promote the adapter through the admin API with a fresh
TOTP code, and ask it one question. Reports each stage's seconds, the training throughput
in tokens/s, and from it the dataset size one 24-hour window trains on this box.

    python bench/finetune.py [--examples 96] [--epochs 2] [--out bench/results/finetune.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pyotp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.process import DaemonProcess, clean_env, free_port, spawn, wait_ready  # noqa: E402

WARDS = ["oncology", "cardiology", "maternity", "paediatrics", "orthopaedics", "neurology",
         "renal", "respiratory", "geriatrics", "surgery", "stroke", "burns"]
ITEMS = ["visiting hours", "nurse in charge", "extension", "hand-over time",
         "pharmacy round", "doctor on call", "fire assembly point", "linen day"]


def dataset(n: int) -> str:
    rows = []
    for i in range(n):
        ward, item = WARDS[i % len(WARDS)], ITEMS[(i // len(WARDS)) % len(ITEMS)]
        rows.append({"messages": [
            {"role": "user", "content": f"What is the {item} on the {ward} ward? ({i})"},
            {"role": "assistant", "content": f"On the {ward} ward the {item} is code "
                                             f"{1000 + i * 7} as of this week."}]})
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def cli(env: dict[str, str], *args: str, timeout: float = 3600) -> Any:
    res = subprocess.run([sys.executable, "-m", "deepseekd", *args], env=env, text=True,
                         capture_output=True, timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"deepseekd {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)


def promote(url: str, env: dict[str, str], job: int) -> float:
    """Seconds from the promote call to the first answer under <base>:wards."""
    creds = cli(env, "user", "add", "bench.admin", "--role", "admin")
    otp = pyotp.TOTP(pyotp.parse_uri(creds["totp_uri"]).secret)
    login = httpx.post(url + "/admin/api/login", timeout=60, json={
        "username": "bench.admin", "password": creds["password"], "totp": otp.now()})
    login.raise_for_status()
    admin = {"Authorization": f"Bearer {login.json()['token']}"}
    t = time.monotonic()
    res = httpx.post(f"{url}/admin/api/finetune/jobs/{job}/promote", headers=admin,
                     timeout=600, json={"name": "wards", "totp": otp.at(time.time() + 30)})
    res.raise_for_status()
    model = f"{res.json()['base_model']}:wards"
    key = cli(env, "key", "create", "bench.admin")["api_key"]
    ask = httpx.post(url + "/v1/chat/completions", timeout=600,
                     headers={"Authorization": f"Bearer {key}"},
                     json={"model": model, "max_tokens": 16, "temperature": 0, "messages": [
                         {"role": "user", "content": "What is the linen day on the renal ward?"}]})
    ask.raise_for_status()
    return time.monotonic() - t


def run(examples: int, epochs: int, work: Path) -> dict[str, Any]:
    env = clean_env(DEEPSEEKD_DATA_DIR=str(work / "data"), DEEPSEEKD_LORA__ENABLED="true",
                    DEEPSEEKD_ENGINE__ENFORCE_EAGER="true", DEEPSEEKD_ENGINE__KV_CACHE_GIB="1",
                    DEEPSEEKD_ENGINE__MAX_MODEL_LEN="2048")
    cli(env, "init", timeout=900)
    port = free_port()
    env_d = {**env, "DEEPSEEKD_SERVER__PORT": str(port)}
    proc = spawn([sys.executable, "-m", "deepseekd", "serve"], env_d, work / "daemon.log")
    daemon = DaemonProcess(f"http://127.0.0.1:{port}", proc, work / "daemon.log")
    try:
        wait_ready(daemon, 900, poll=0.5)
        src = work / "wards.jsonl"
        src.write_text(dataset(examples))
        (work / "prompts.txt").write_text("What is the linen day on the renal ward?\n")
        t0 = time.monotonic()
        ds = cli(env, "finetune", "dataset", "import", str(src), "--name", "wards",
                 "--prompts", str(work / "prompts.txt"))
        t1 = time.monotonic()
        job = cli(env, "finetune", "run", "--dataset", "wards", "--epochs", str(epochs))
        t2 = time.monotonic()
        serve_s = promote(daemon.url, env, int(job["id"]))
        t3 = time.monotonic()
    finally:
        daemon.stop()
    tokens = ds["stats"]["tokens"]["total"] * ds["stats"]["train_examples"] / ds["examples"]
    tok_s = tokens * epochs / (t2 - t1)
    per_example = ds["stats"]["tokens"]["total"] / ds["examples"]
    return {
        "examples": ds["examples"], "train_examples": ds["stats"]["train_examples"],
        "tokens_per_example": round(per_example, 1), "epochs": epochs,
        "steps": job["total_steps"], "status": job["status"],
        "eval_loss_before": job["eval_loss_before"], "eval_loss_after": job["eval_loss_after"],
        "import_s": round(t1 - t0, 1), "train_s": round(t2 - t1, 1),
        "promote_to_first_answer_s": round(serve_s, 1), "import_to_serving_s": round(t3 - t0, 1),
        "train_tokens_per_s": round(tok_s, 1),
        # What one 24-hour window trains at this rate, with the shipped 3 epochs.
        "examples_in_24h_at_3_epochs": int(tok_s * 86400 / 3 / per_example),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--examples", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        result = run(args.examples, args.epochs, Path(tmp))
    result |= {"when": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
