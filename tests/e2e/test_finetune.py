"""Fine-tuning from the command line, against the real data dir `deepseekd init` made (the
embedded SmolLM2 and its chat template): datasets imported, counted in real tokens, sealed on
disk, listed, refused line by line, deleted."""

from __future__ import annotations

import json
from pathlib import Path

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
