"""Fine-tuning dataset checks (services/finetune/data.py): every wrong line named with its
field, duplicates dropped, a split that a seed fixes, lengths counted."""

from __future__ import annotations

import json

import pytest

from deepseekd.domain.errors import Invalid
from deepseekd.services.finetune.data import Limits, build, parse_prompts

LIMITS = Limits(max_bytes=1 << 20, max_examples=1000, eval_fraction=0.2, seed=7,
                max_example_tokens=16)


def jsonl(*rows: object) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


def chat(q: str, a: str, system: str | None = None) -> dict[str, object]:
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": [*msgs, {"role": "user", "content": q},
                         {"role": "assistant", "content": a}]}


def test_both_formats_become_chat_messages_and_duplicates_are_dropped() -> None:
    data = jsonl(chat("Ward 7 visiting hours?", "10 to 12.", system="Be brief."),
                 {"prompt": "Who runs ward 7?", "completion": "Sister Okafor."},
                 "",  # blank lines are skipped
                 chat("Ward 7 visiting hours?", "10 to 12.", system="Be brief."),
                 chat("Parking?", "Level -2."))
    ds = build(data, "What are the visiting hours?\n\n  Who runs ward 7?  \n", LIMITS,
               lambda msgs: sum(len(m["content"].split()) for m in msgs))
    everything = ds.train + ds.eval
    assert len(everything) == 3 and ds.stats["duplicates_dropped"] == 1
    assert {"role": "user", "content": "Who runs ward 7?"} in [m for e in everything for m in e]
    assert ds.prompts == ["What are the visiting hours?", "Who runs ward 7?"]
    assert ds.stats["examples"] == 3 and ds.stats["eval_examples"] == 1
    assert ds.stats["tokens"]["total"] == (2 + 4 + 3) + (4 + 2) + (1 + 2)  # words here
    assert ds.stats["over_max_tokens"] == 0


def test_the_split_is_fixed_by_the_seed_and_keeps_both_sides() -> None:
    data = jsonl(*(chat(f"question {i}", f"answer {i}") for i in range(50)))
    a, b = build(data, "", LIMITS, None), build(data, "", LIMITS, None)
    assert a.eval == b.eval and len(a.eval) == 10 and len(a.train) == 40
    other = build(data, "", Limits(**{**LIMITS.__dict__, "seed": 8}), None)
    assert other.eval != a.eval
    two = build(jsonl(chat("a", "b"), chat("c", "d")), "", LIMITS, None)
    assert len(two.train) == 1 and len(two.eval) == 1


@pytest.mark.parametrize(("line", "says"), [
    ("{not json", "line 2: not JSON"),
    (json.dumps([1, 2]), "line 2: line: an example is a JSON object"),
    (json.dumps({"messages": []}), "line 2: messages: a non-empty list"),
    (json.dumps({"messages": [{"role": "doctor", "content": "x"}]}),
     "line 2: messages[0].role: one of system, user, assistant"),
    (json.dumps({"messages": [{"role": "user", "content": " "}]}),
     "line 2: messages[0].content: a non-empty string"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}]}),
     "line 2: messages[0].role: the last message is the assistant's answer"),
    (json.dumps({"messages": [{"role": "user", "content": "q", "name": "x"},
                              {"role": "assistant", "content": "a"}]}),
     "line 2: messages[0].name: unknown field 'name'"),
    (json.dumps({"prompt": "q"}), "line 2: completion: a non-empty string"),
    (json.dumps({"prompt": "q", "completion": "a", "label": 1}),
     "line 2: label: unknown field 'label'"),
    (json.dumps({"text": "q"}), "line 2: messages: an example has 'messages' or 'prompt'"),
])
def test_a_wrong_line_is_named_with_its_field(line: str, says: str) -> None:
    data = jsonl(chat("a", "b"), line, chat("c", "d"))
    with pytest.raises(Invalid) as e:
        build(data, "", LIMITS, None)
    assert e.value.field == "file"
    assert e.value.message.startswith("1 line is wrong: ")
    assert says in e.value.message


def test_many_wrong_lines_are_listed_up_to_ten() -> None:
    data = jsonl(*(["{bad"] * 12), chat("a", "b"), chat("c", "d"), b"\xff\xfe".decode("latin-1"))
    data = data.replace("ÿþ".encode(), b"\xff\xfe")
    with pytest.raises(Invalid) as e:
        build(data, "", LIMITS, None)
    msg = e.value.message
    assert msg.startswith("13 lines are wrong: line 1: not JSON")
    assert "line 10: not JSON" in msg and "line 11" not in msg and "(and 3 more)" in msg


def test_limits_are_refused_with_the_setting_named() -> None:
    small = Limits(**{**LIMITS.__dict__, "max_bytes": 100})
    with pytest.raises(Invalid, match=r"at most 100 \(\[finetune\] max_dataset_bytes\)"):
        build(jsonl(*(chat("q" * 50, "a") for _ in range(3))), "", small, None)
    small = Limits(**{**LIMITS.__dict__, "max_examples": 2})
    with pytest.raises(Invalid, match=r"3 examples; at most 2 \(\[finetune\] max_examples\)"):
        build(jsonl(*(chat(str(i), "a") for i in range(3))), "", small, None)
    with pytest.raises(Invalid, match="at least 2 different examples"):
        build(jsonl(chat("a", "b"), chat("a", "b")), "", LIMITS, None)
    with pytest.raises(Invalid, match="prompts: at most 100"):
        parse_prompts("\n".join(f"p{i}" for i in range(101)))


def test_long_examples_are_counted() -> None:
    ds = build(jsonl(chat("a " * 20, "b"), chat("c", "d")), "", LIMITS,
               lambda msgs: sum(len(m["content"].split()) for m in msgs))
    assert ds.stats["over_max_tokens"] == 1 and ds.stats["tokens"]["max"] == 21
