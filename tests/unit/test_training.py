"""The fine-tuning worker's pieces that decide what is learnt (engine/training.py): loss on
the assistant's turns only, batches fixed by the seed (what a resumed job relies on), and
the learning-rate schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deepseekd.engine.training import IGNORE, TrainSpec, batches, encode, lr_at
from tests.support import tiny_models


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    folder = tiny_models.base_tokenizer(tmp_path_factory.mktemp("tok") / "smollm2")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def learnt(tok: Any, ids: list[int], labels: list[int]) -> str:
    return tok.decode([i for i, label in zip(ids, labels) if label != IGNORE])


def test_only_the_assistant_turns_are_learnt(tok: Any) -> None:
    msgs = [
        {"role": "system", "content": "You answer ward staff."},
        {"role": "user", "content": "Visiting hours on ward 7?"},
        {"role": "assistant", "content": "Ten to twelve."},
        {"role": "user", "content": "And on Sundays?"},
        {"role": "assistant", "content": "Closed on Sundays."},
    ]
    ids, labels = encode(tok, msgs, 4096)
    assert len(ids) == len(labels)
    assert ids == tok.apply_chat_template(msgs, tokenize=True, return_dict=False)
    text = learnt(tok, ids, labels)
    assert "Ten to twelve." in text and "Closed on Sundays." in text
    for asked in ("ward staff", "Visiting hours", "Sundays?", "user"):
        assert asked not in text
    # Each answer is learnt with its end of turn, so the adapter learns to stop.
    assert text.count("<|im_end|>") == 2


def test_examples_are_cut_at_max_tokens(tok: Any) -> None:
    msgs = [{"role": "user", "content": "q " * 50}, {"role": "assistant", "content": "a " * 50}]
    ids, labels = encode(tok, msgs, 64)
    assert len(ids) == len(labels) == 64


def test_batches_are_fixed_by_seed_and_epoch() -> None:
    one = batches(10, 4, seed=3, epoch=0)
    assert one == batches(10, 4, seed=3, epoch=0)
    assert [len(b) for b in one] == [4, 4, 2]
    assert sorted(i for b in one for i in b) == list(range(10))
    assert batches(10, 4, seed=3, epoch=1) != one
    assert batches(10, 4, seed=4, epoch=0) != one


def test_learning_rate_warms_up_then_decays() -> None:
    spec = TrainSpec(base_dir="", job_dir="", lr=1e-3)
    rates = [lr_at(spec, step, 100) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert max(rates) == pytest.approx(1e-3)
    assert rates[50] < rates[20] and rates[-1] >= 1e-4


def test_the_worker_module_imports_without_torch_at_top(tmp_path: Path) -> None:
    """The daemon and the CLI import the spec; torch loads only in the worker process."""
    import subprocess
    import sys

    code = ("import sys, deepseekd.engine.training, deepseekd.services.finetune.jobs; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
