"""Fine-tuning datasets as an admin uploads them: JSONL, one example per line, either in
OpenAI's chat format (``{"messages": [{"role", "content"}, ...]}``) or as a
``{"prompt", "completion"}`` pair (one user turn, one assistant answer).

Every line is checked; an error names the line and the field. Duplicates are dropped, the
rest split into train and eval with a fixed seed, and the lengths counted (in tokens when a
counter for the base model's chat template is given). Nothing here is stored or logged:
the service seals the result (services/finetune/datasets.py).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from deepseekd.domain.errors import Invalid

ROLES = ("system", "user", "assistant")
MAX_ERRORS_SHOWN = 10

Messages = list[dict[str, str]]
TokenCounter = Callable[[Messages], int]
"""Tokens of one example with the base model's chat template applied."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_examples: int
    eval_fraction: float
    seed: int
    max_example_tokens: int


@dataclass
class Dataset:
    """A checked dataset: train and eval examples as chat messages, plus the regression
    prompts the admin keeps with it (asked before and after training)."""

    train: list[Messages]
    eval: list[Messages]
    prompts: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {"train": self.train, "eval": self.eval, "prompts": self.prompts}

    @classmethod
    def from_payload(cls, data: dict[str, Any], stats: dict[str, Any]) -> Dataset:
        return cls(list(data["train"]), list(data["eval"]), list(data["prompts"]), stats)


def _messages(obj: Any) -> Messages:
    """One line's example as chat messages; Invalid names the field."""
    if not isinstance(obj, dict):
        raise Invalid("an example is a JSON object", field="line")
    if "messages" in obj:
        extra = sorted(set(obj) - {"messages"})
        if extra:
            raise Invalid(f"unknown field {extra[0]!r} (only 'messages')", field=extra[0])
        raw = obj["messages"]
        if not isinstance(raw, list) or not raw:
            raise Invalid("a non-empty list of messages", field="messages")
        return [_message(m, i) for i, m in enumerate(raw)]
    if "prompt" in obj or "completion" in obj:
        extra = sorted(set(obj) - {"prompt", "completion"})
        if extra:
            raise Invalid(
                f"unknown field {extra[0]!r} (only 'prompt', 'completion')", field=extra[0]
            )
        for name in ("prompt", "completion"):
            if not isinstance(obj.get(name), str) or not obj[name].strip():
                raise Invalid("a non-empty string", field=name)
        return [
            {"role": "user", "content": obj["prompt"]},
            {"role": "assistant", "content": obj["completion"]},
        ]
    raise Invalid("an example has 'messages' or 'prompt' and 'completion'", field="messages")


def _message(m: Any, i: int) -> dict[str, str]:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise Invalid("a message is an object with 'role' and 'content'", field=where)
    extra = sorted(set(m) - {"role", "content"})
    if extra:
        raise Invalid(f"unknown field {extra[0]!r}", field=f"{where}.{extra[0]}")
    if m.get("role") not in ROLES:
        raise Invalid(f"one of {', '.join(ROLES)}", field=f"{where}.role")
    if not isinstance(m.get("content"), str) or not m["content"].strip():
        raise Invalid("a non-empty string", field=f"{where}.content")
    return {"role": m["role"], "content": m["content"]}


def _check_turns(msgs: Messages) -> None:
    roles = [m["role"] for m in msgs]
    if "system" in roles[1:]:
        raise Invalid("only the first message may be a system message", field="messages")
    if "user" not in roles:
        raise Invalid("an example needs a user message", field="messages")
    if roles[-1] != "assistant":
        raise Invalid(
            "the last message is the assistant's answer (what the model learns)",
            field=f"messages[{len(msgs) - 1}].role",
        )


def parse_lines(data: bytes, limits: Limits) -> tuple[list[Messages], int]:
    """Every example of a JSONL upload, in order, duplicates dropped; (examples, dropped).
    Invalid lists the first errors, each with its line number and field."""
    if len(data) > limits.max_bytes:
        raise Invalid(
            f"file: {len(data)} bytes; at most {limits.max_bytes} ([finetune] max_dataset_bytes)",
            field="file",
        )
    errors: list[str] = []
    seen: set[str] = set()
    examples: list[Messages] = []
    dropped = 0
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            msgs = _messages(json.loads(raw.decode("utf-8")))
            _check_turns(msgs)
        except UnicodeDecodeError:
            errors.append(f"line {number}: not UTF-8 text")
            continue
        except json.JSONDecodeError as e:
            errors.append(f"line {number}: not JSON ({e.msg}, column {e.colno})")
            continue
        except Invalid as e:
            errors.append(f"line {number}: {e.field}: {e.message}")
            continue
        key = json.dumps(msgs, sort_keys=True, ensure_ascii=False)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        examples.append(msgs)
    _raise_errors(errors)
    if len(examples) > limits.max_examples:
        raise Invalid(
            f"file: {len(examples)} examples; at most {limits.max_examples} "
            "([finetune] max_examples)",
            field="file",
        )
    if len(examples) < 2:
        raise Invalid(
            "file: at least 2 different examples (one to train on, one to evaluate)",
            field="file",
        )
    return examples, dropped


def _raise_errors(errors: list[str]) -> None:
    if not errors:
        return
    shown = "; ".join(errors[:MAX_ERRORS_SHOWN])
    more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
    noun = "line is" if len(errors) == 1 else "lines are"
    raise Invalid(f"{len(errors)} {noun} wrong: {shown}{more}", field="file")


def parse_prompts(text: str) -> list[str]:
    """The regression prompts: one per non-empty line."""
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if len(prompts) > 100:
        raise Invalid(f"prompts: at most 100 (this file has {len(prompts)})", field="prompts")
    return prompts


def split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded train/eval split of ``n`` examples, as indices in file order: the same file
    and seed always split the same way; eval and train keep at least one each."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_eval = min(n - 1, max(1, round(n * fraction)))
    held = set(order[:n_eval])
    return [i for i in range(n) if i not in held], sorted(held)


def _quantiles(values: Sequence[int]) -> dict[str, int]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]

    return {"min": ordered[0], "p50": at(0.5), "p95": at(0.95), "max": ordered[-1]}


def build(data: bytes, prompts: str, limits: Limits, count_tokens: TokenCounter | None) -> Dataset:
    """Check, de-duplicate, split and measure an upload."""
    examples, dropped = parse_lines(data, limits)
    train, held = split(len(examples), limits.eval_fraction, limits.seed)
    chars = [sum(len(m["content"]) for m in e) for e in examples]
    stats: dict[str, Any] = {
        "examples": len(examples),
        "train_examples": len(train),
        "eval_examples": len(held),
        "duplicates_dropped": dropped,
        "bytes": len(data),
        "chars": _quantiles(chars),
        "seed": limits.seed,
    }
    if count_tokens is not None:
        tokens = [count_tokens(e) for e in examples]
        stats["tokens"] = {"total": sum(tokens), **_quantiles(tokens)}
        stats["train_tokens"] = sum(tokens[i] for i in train)
        stats["over_max_tokens"] = sum(t > limits.max_example_tokens for t in tokens)
        stats["max_example_tokens"] = limits.max_example_tokens
    return Dataset(
        [examples[i] for i in train], [examples[i] for i in held], parse_prompts(prompts), stats
    )
