"""The fine-tuning worker: a LoRA adapter trained on the base model with peft and
transformers, in a process of its own (``python -m deepseekd.engine.training``).

It reads one JSON object on stdin (the job's settings, the train and eval examples and the
regression prompts: the dataset is never written to disk in clear) and writes JSON lines on
stdout: ``start``, ``eval`` (loss on the held-out split before and after), ``answers``
(greedy answers to the regression prompts before and after), ``step`` (loss, learning rate,
seconds so far), ``checkpoint`` and ``done`` or ``error``. The supervisor
(services/finetune/jobs.py) turns them into the job's record, metrics and audit events.

- Loss on the assistant's turns only: every other token's label is -100.
- Checkpoints (adapter weights, optimizer state, step) every ``checkpoint_every`` steps,
  written beside the last one and switched to by one rename, so a kill -9 at any moment
  leaves a whole checkpoint to resume from; the example order of every epoch is fixed by the
  seed, so a resumed job sees the same batches it would have.
- Low priority and a thread cap (``nice``, ``threads``): serving stays responsive.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

IGNORE = -100
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""The linear layers of a Llama/Qwen/DeepSeek decoder block, all of which vLLM's LoRA
serving supports."""

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class TrainSpec:
    base_dir: str
    job_dir: str
    rank: int = 8
    alpha: int = 16
    epochs: int = 1
    lr: float = 2e-4
    max_steps: int = 0
    """0: the epochs decide."""
    batch_size: int = 4
    max_tokens: int = 2048
    threads: int = 1
    nice: int = 10
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 10
    answer_tokens: int = 48
    before: bool = True
    """Measure the base model (eval loss, answers) first; False when resuming a job that
    already did."""
    extra: dict[str, Any] = field(default_factory=dict)


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- data


def encode(tok: Any, messages: Messages, max_tokens: int) -> tuple[list[int], list[int]]:
    """Token ids of one example with the chat template, and labels that keep only the
    assistant's turns (each up to and including its end-of-turn tokens)."""

    def ids(msgs: Messages, prompt: bool) -> list[int]:
        out = tok.apply_chat_template(
            msgs, tokenize=True, add_generation_prompt=prompt, return_dict=False
        )
        return list(out)

    full = ids(messages, False)
    labels = [IGNORE] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start, end = len(ids(messages[:i], True)), len(ids(messages[: i + 1], False))
        if full[:end] != ids(messages[: i + 1], False):
            raise ValueError("the base model's chat template renders a prefix differently")
        labels[start:end] = full[start:end]
    return full[:max_tokens], labels[:max_tokens]


def batches(n: int, size: int, seed: int, epoch: int) -> list[list[int]]:
    """The example indices of every batch of one epoch, in an order fixed by the seed."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i : i + size] for i in range(0, n, size)]


def collate(
    torch: Any, rows: list[tuple[list[int], list[int]]], pad: int, device: str = "cpu"
) -> dict[str, Any]:
    """Right-padded tensors of one batch (padding neither attended to nor learned)."""
    width = max(len(ids) for ids, _ in rows)
    ids = [r[0] + [pad] * (width - len(r[0])) for r in rows]
    labels = [r[1] + [IGNORE] * (width - len(r[1])) for r in rows]
    mask = [[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "labels": torch.tensor(labels, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


# --------------------------------------------------------------------------- model


@dataclass
class Run:
    spec: TrainSpec
    torch: Any
    tok: Any
    model: Any
    optimizer: Any
    train: list[tuple[list[int], list[int]]]
    evals: list[tuple[list[int], list[int]]]
    total_steps: int
    steps_per_epoch: int


def load(spec: TrainSpec, train: list[Messages], evals: list[Messages]) -> Run:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(spec.seed)
    tok = AutoTokenizer.from_pretrained(spec.base_dir, local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(
        spec.base_dir, dtype=torch.float32, local_files_only=True
    )
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        target_modules=TARGET_MODULES,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config).to(spec.device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=spec.lr, weight_decay=0.0
    )
    enc_train = [encode(tok, m, spec.max_tokens) for m in train]
    enc_eval = [encode(tok, m, spec.max_tokens) for m in evals]
    per_epoch = math.ceil(len(enc_train) / spec.batch_size)
    total = spec.max_steps or per_epoch * spec.epochs
    return Run(spec, torch, tok, model, optimizer, enc_train, enc_eval, total, per_epoch)


def eval_loss(run: Run) -> float:
    """Mean loss per assistant token over the held-out examples."""
    torch, total, tokens = run.torch, 0.0, 0
    run.model.eval()
    with torch.no_grad():
        for row in run.evals:
            batch = collate(torch, [row], run.tok.pad_token_id or 0, run.spec.device)
            n = int((batch["labels"][:, 1:] != IGNORE).sum())
            if n:
                total += float(run.model(**batch).loss) * n
                tokens += n
    return total / tokens if tokens else float("nan")


def answers(run: Run, prompts: list[str]) -> list[str]:
    """Greedy answers to the regression prompts (what the admin compares)."""
    torch, out = run.torch, []
    run.model.eval()
    for prompt in prompts:
        ids = run.tok.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=True,
            add_generation_prompt=True,
            return_dict=False,
        )
        x = torch.tensor([list(ids)], device=run.spec.device)
        with torch.no_grad():
            y = run.model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=run.spec.answer_tokens,
                do_sample=False,
                pad_token_id=run.tok.pad_token_id or run.tok.eos_token_id,
            )
        out.append(run.tok.decode(y[0, x.shape[1] :], skip_special_tokens=True).strip())
    return out


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(run: Run, step: int) -> None:
    """A whole checkpoint beside the last, switched to by renaming ``latest.json``."""
    job = Path(run.spec.job_dir)
    target = job / f"checkpoint-{step}"
    shutil.rmtree(target, ignore_errors=True)
    run.model.save_pretrained(target)
    run.torch.save(run.optimizer.state_dict(), target / "optimizer.pt")
    _sync_tree(target)
    pointer = job / "latest.json.tmp"
    pointer.write_text(json.dumps({"step": step, "dir": target.name}))
    _fsync(pointer)
    os.replace(pointer, job / "latest.json")
    _fsync(job)
    for old in job.glob("checkpoint-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def resume(run: Run) -> int:
    """Load the last whole checkpoint, if any; the step it was taken at (0: none)."""
    job = Path(run.spec.job_dir)
    try:
        latest = json.loads((job / "latest.json").read_text())
    except FileNotFoundError:
        return 0
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    where = job / latest["dir"]
    set_peft_model_state_dict(run.model, load_file(where / "adapter_model.safetensors"))
    run.optimizer.load_state_dict(
        run.torch.load(where / "optimizer.pt", map_location=run.spec.device)
    )
    return int(latest["step"])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            _fsync(p)
    _fsync(root)


# --------------------------------------------------------------------------- the loop


def lr_at(spec: TrainSpec, step: int, total: int) -> float:
    """Linear warm-up over the first 10% of the steps, then linear decay to 10%."""
    warm = max(1, total // 10)
    if step < warm:
        return spec.lr * (step + 1) / warm
    return spec.lr * max(0.1, 1 - (step - warm) / max(1, total - warm))


def train_steps(run: Run, start: int, t0: float) -> None:
    spec, torch = run.spec, run.torch
    run.model.train()
    pad = run.tok.pad_token_id or 0
    for step in range(start, run.total_steps):
        epoch, index = divmod(step, run.steps_per_epoch)
        chosen = batches(len(run.train), spec.batch_size, spec.seed, epoch)[index]
        batch = collate(torch, [run.train[i] for i in chosen], pad, spec.device)
        lr = lr_at(spec, step, run.total_steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        loss = run.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        done = step + 1
        emit(
            "step",
            step=done,
            total=run.total_steps,
            loss=round(float(loss), 5),
            lr=lr,
            elapsed_s=round(time.monotonic() - t0, 2),
        )
        if done % spec.checkpoint_every == 0 or done == run.total_steps:
            save_checkpoint(run, done)
            emit("checkpoint", step=done)


def main() -> int:
    job = json.loads(sys.stdin.read())
    spec = TrainSpec(**job["spec"])
    os.nice(spec.nice)
    import torch

    torch.set_num_threads(spec.threads)
    t0 = time.monotonic()
    run = load(spec, job["train"], job["eval"])
    start = resume(run)
    emit(
        "start",
        total=run.total_steps,
        resumed_from=start,
        spec=asdict(spec),
        train_examples=len(run.train),
        eval_examples=len(run.evals),
    )
    if spec.before and start == 0:
        emit("eval", phase="before", loss=eval_loss(run))
        prompts = job.get("prompts", [])
        emit("answers", phase="before", prompts=prompts, answers=answers(run, prompts))
    train_steps(run, start, t0)
    emit("eval", phase="after", loss=eval_loss(run))
    prompts = job.get("prompts", [])
    emit("answers", phase="after", prompts=prompts, answers=answers(run, prompts))
    adapter = Path(spec.job_dir) / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    run.model.save_pretrained(adapter)
    _sync_tree(adapter)
    emit(
        "done",
        adapter=str(adapter),
        steps=run.total_steps,
        elapsed_s=round(time.monotonic() - t0, 2),
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # the supervisor records it; the traceback goes to stderr
        emit("error", message=f"{type(exc).__name__}: {exc}"[:400])
        raise
