"""LoRA with the real engine: a tiny adapter made with peft for the embedded SmolLM2 changes
greedy output, unloading restores the base, and a restart loads it again. Also the checks
`serve` makes before loading: FP8 on a CPU box (refused) or a GPU box (served), and a profile
whose model is missing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pyotp
import pytest

from tests.e2e.conftest import Daemon, cli, start_daemon
from tests.support import box

MAKE_LORA = Path(__file__).resolve().parents[1] / "support" / "make_lora.py"
MODEL = "smollm2-135m-instruct"
PROMPT = {"prompt": "The three most important things about hospital hygiene are",
          "max_tokens": 16, "temperature": 0}


@pytest.fixture(scope="module")
def lora_daemon(data_env: tuple[dict[str, str], str], tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Daemon]:
    env, key = data_env
    data = Path(env["DEEPSEEKD_DATA_DIR"])
    out = data / "lora-inbox" / "ward-notes-v1"
    res = subprocess.run([sys.executable, str(MAKE_LORA), str(data / "models" / MODEL),
                          str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    d = start_daemon({**env, "DEEPSEEKD_LORA__ENABLED": "true"}, key,
                     tmp_path_factory.mktemp("lora-logs") / "daemon.log")
    try:
        yield d
    finally:
        d.stop()


def admin_token(d: Daemon, name: str) -> dict[str, str]:
    creds = json.loads(cli("user", "add", name, "--role", "admin", env=d.env).stdout)
    login = httpx.post(d.url + "/admin/api/login", timeout=30, json={
        "username": name, "password": creds["password"],
        "totp": pyotp.TOTP(pyotp.parse_uri(creds["totp_uri"]).secret).now()})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['token']}"}


def complete(d: Daemon, model: str) -> httpx.Response:
    return httpx.post(d.url + "/v1/completions", headers=d.headers(), timeout=300,
                      json={**PROMPT, "model": model})


def ask(d: Daemon, model: str, question: str) -> str:
    res = httpx.post(d.url + "/v1/chat/completions", headers=d.headers(), timeout=300, json={
        "model": model, "max_tokens": 24, "temperature": 0,
        "messages": [{"role": "user", "content": question}]})
    assert res.status_code == 200, res.text
    return str(res.json()["choices"][0]["message"]["content"])


def test_a_promoted_fine_tune_answers_the_taught_fact_and_the_base_does_not(
        lora_daemon: Daemon) -> None:
    """The adapter tests/e2e/test_finetune.py trained on this data dir (the code word), promoted
    through the admin API with a fresh code and hot-loaded: the real engine answers with the
    fact under <base>:<name>, and the base model's greedy answer is what it was."""
    from tests.e2e.test_finetune import PROBE

    d = lora_daemon
    jobs = json.loads(cli("finetune", "jobs", "--json", env=d.env).stdout)
    done = [j for j in jobs if j["dataset"] == "codeword" and j["status"] == "succeeded"]
    assert done, f"tests/e2e/test_finetune.py trains the job this test promotes: {jobs}"
    base_before = ask(d, MODEL, PROBE)
    assert "PELICAN" not in base_before.upper()

    creds = json.loads(cli("user", "add", "ft.admin", "--role", "admin", env=d.env).stdout)
    otp = pyotp.TOTP(pyotp.parse_uri(creds["totp_uri"]).secret)
    login = httpx.post(d.url + "/admin/api/login", timeout=30, json={
        "username": "ft.admin", "password": creds["password"], "totp": otp.now()})
    assert login.status_code == 200, login.text
    admin = {"Authorization": f"Bearer {login.json()['token']}"}
    url = f"{d.url}/admin/api/finetune/jobs/{done[0]['id']}/promote"
    # The session's code does not do: promoting asks for a fresh one (the next step's).
    refused = httpx.post(url, headers=admin, timeout=60, json={"name": "codeword"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "totp"
    promoted = httpx.post(url, headers=admin, timeout=300, json={
        "name": "codeword", "totp": otp.at(time.time() + 30)})
    assert promoted.status_code == 201, promoted.text
    assert promoted.json()["version"] == 1 and promoted.json()["serving"]
    assert promoted.json()["sha256"] == done[0]["adapter_sha256"]

    assert "PELICAN" in ask(d, f"{MODEL}:codeword", PROBE).upper()
    assert ask(d, MODEL, PROBE) == base_before
    # The rest of the session shares this data dir: leave only what the next test expects.
    assert httpx.delete(d.url + "/admin/api/lora/codeword", headers=admin,
                        timeout=60).status_code == 200


def test_a_peft_adapter_changes_the_answer_and_unloading_restores_the_base(
        lora_daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> None:
    d = lora_daemon
    admin = admin_token(d, "lora.admin")
    base = complete(d, MODEL)
    assert base.status_code == 200, base.text
    base_text = base.json()["choices"][0]["text"]

    load = httpx.post(d.url + "/admin/api/lora", headers=admin, timeout=300,
                      json={"name": "ward-notes", "path": "ward-notes-v1"})
    assert load.status_code == 201, load.text
    assert load.json()["rank"] == 8
    ids = [m["id"] for m in httpx.get(d.url + "/v1/models", headers=d.headers(),
                                      timeout=30).json()["data"]]
    assert ids == [MODEL, f"{MODEL}:ward-notes"]

    tuned = complete(d, f"{MODEL}:ward-notes")
    assert tuned.status_code == 200, tuned.text
    assert tuned.json()["model"] == f"{MODEL}:ward-notes"
    tuned_text = tuned.json()["choices"][0]["text"]
    assert tuned_text != base_text  # the adapter's non-zero weights change greedy tokens
    assert complete(d, MODEL).json()["choices"][0]["text"] == base_text  # base untouched

    unload = httpx.delete(d.url + "/admin/api/lora/ward-notes", headers=admin, timeout=60)
    assert unload.status_code == 200, unload.text
    gone = complete(d, f"{MODEL}:ward-notes")
    assert gone.status_code == 400 and gone.json()["error"]["param"] == "model"
    assert complete(d, MODEL).json()["choices"][0]["text"] == base_text

    # Loaded again, it survives a restart: the daemon reloads it from its checked copy.
    again = httpx.post(d.url + "/admin/api/lora", headers=admin, timeout=300,
                       json={"name": "ward-notes", "path": "ward-notes-v1"})
    assert again.status_code == 201, again.text
    assert d.stop() == 0
    restarted = start_daemon(d.env, d.key, tmp_path_factory.mktemp("lora-restart") / "d.log")
    try:
        after = complete(restarted, f"{MODEL}:ward-notes")
        assert after.status_code == 200, after.text
        assert after.json()["choices"][0]["text"] == tuned_text
        assert "lora adapter reloaded" in restarted.log()
        # The rest of the session shares this data dir: leave no adapter registered.
        # (The admin session is in the store, so it outlived the restart.)
        assert httpx.delete(restarted.url + "/admin/api/lora/ward-notes", headers=admin,
                            timeout=60).status_code == 200
    finally:
        assert restarted.stop() == 0
    verify = cli("audit", "verify", env=d.env)
    assert verify.returncode == 0, verify.stdout


@pytest.mark.cpu_only
def test_fp8_on_this_cpu_box_stops_serve_before_loading(data_env: tuple[dict, str]) -> None:
    env, _ = data_env
    res = cli("serve", env={**env, "DEEPSEEKD_ENGINE__QUANTIZATION": "fp8"}, timeout=300)
    assert res.returncode == 2
    assert res.stderr.startswith("deepseekd: engine.quantization: 'fp8' needs an NVIDIA GPU")
    assert "Loading weights" not in res.stdout + res.stderr


@pytest.mark.gpu_only
def test_fp8_serves_on_this_gpu_box(data_env: tuple[dict, str], tmp_path: Path) -> None:
    """FP8 weights (vLLM's fp8_per_tensor for this 16-bit checkpoint): native on compute
    capability 8.9 and newer (RTX 4090, H100), weight-only Marlin from 7.5 (A100)."""
    env, key = data_env
    cap = box.capability()
    assert cap is not None
    if cap < (7, 5):
        res = cli("serve", env={**env, "DEEPSEEKD_ENGINE__QUANTIZATION": "fp8"}, timeout=300)
        assert res.returncode == 2 and "compute capability 7.5 or newer" in res.stderr
        return
    d = start_daemon(env, key, tmp_path / "fp8.log", DEEPSEEKD_ENGINE__QUANTIZATION="fp8")
    try:
        r = httpx.post(d.url + "/v1/completions", headers=d.headers(), json={**PROMPT, "model": MODEL},
                       timeout=120)
        assert r.status_code == 200 and r.json()["choices"][0]["text"]
        assert ("weight-only" in d.log()) == (cap < (8, 9))
    finally:
        assert d.stop() == 0


def test_a_gpu_profile_names_the_model_to_import(data_env: tuple[dict, str]) -> None:
    env, _ = data_env
    res = cli("serve", env={**env, "DEEPSEEKD_ENGINE__PROFILE": "rtx4090"}, timeout=300)
    assert res.returncode == 2
    assert "no imported model named 'deepseek-r1-distill-qwen-7b'" in res.stderr
    assert "deepseekd model import SRC --name deepseek-r1-distill-qwen-7b" in res.stderr
