"""The reasoning split with vLLM's real DeepSeek parsers and a real R1-style tokenizer, on
token sequences: both tags, only the closing tag (R1 after a template that opened
``<think>``), no tags, a never-closed tag (what random weights produce), tags split across
deltas; every way of cutting the output into deltas gives what the whole output gives."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from deepseekd.engine.reasoning import R1, V3, Reasoning, ReasoningError, pick_parser
from deepseekd.engine.vllm_reasoning import check_parser_name, load_reasoning
from tests.support import tiny_models


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.base_tokenizer(tmp_path_factory.mktemp("tok") / "smollm2")


@pytest.fixture(scope="module")
def tok(base: Path) -> Any:
    return tiny_models.r1_tokenizer(base)


@pytest.fixture(scope="module")
def r1(tok: Any) -> Reasoning:
    reasoning = load_reasoning("auto", tok, ["Qwen2ForCausalLM"])
    assert reasoning is not None and reasoning.name == R1
    return reasoning


def ids_of(tok: Any, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False))


def per_token(tok: Any, ids: list[int]) -> list[tuple[str, list[int]]]:
    """Deltas as vLLM streams them: one token each, with its text."""
    return [(tok.decode([i]), [i]) for i in ids]


def run(reasoning: Reasoning, deltas: list[tuple[str, list[int]]]) -> tuple[str, str, int]:
    sp = reasoning.splitter()
    r_all, a_all = "", ""
    for text, ids in deltas:
        r, a = sp.feed(text, ids)
        r_all, a_all = r_all + r, a_all + a
    r, a = sp.finish()
    return r_all + r, a_all + a, sp.reasoning_tokens


def chunkings(tok: Any, ids: list[int], seed: int = 0) -> list[list[tuple[str, list[int]]]]:
    """The whole output in one delta, one token per delta, and random cuts in between."""
    out = [[(tok.decode(ids), ids)], per_token(tok, ids)]
    rnd = random.Random(seed)
    for _ in range(5):
        cuts = sorted(rnd.sample(range(1, len(ids)), k=min(3, len(ids) - 1)))
        bounds = [0, *cuts, len(ids)]
        out.append([(tok.decode(ids[a:b]), ids[a:b]) for a, b in zip(bounds, bounds[1:])])
    return out


CASES = [
    # (output text, reasoning, answer) as R1 models produce them
    ("<think>\nFirst, the sum.</think>\n\nThe answer is 4.", "\nFirst, the sum.",
     "\n\nThe answer is 4."),
    ("The user asks for a sum.</think>\n\nIt is 4.", "The user asks for a sum.", "\n\nIt is 4."),
    ("No tags at all, still thinking", "No tags at all, still thinking", ""),
    ("Still going when max_tokens ran out <think> and on", "Still going when max_tokens ran out  and on",
     ""),
]


@pytest.mark.parametrize("text,reasoning,answer", CASES)
def test_split_agrees_for_every_delta_boundary(tok: Any, r1: Reasoning, text: str,
                                               reasoning: str, answer: str) -> None:
    ids = ids_of(tok, text)
    results = {run(r1, deltas) for deltas in chunkings(tok, ids)}
    assert len(results) == 1, results
    ((got_r, got_a, n),) = results
    assert (got_r, got_a) == (reasoning, answer)
    end = tok.convert_tokens_to_ids("</think>")
    assert n == (ids.index(end) + 1 if end in ids else len(ids))


@pytest.mark.parametrize("text", [c[0] for c in CASES[:3]])
def test_matches_vllm_own_parsing_of_the_whole_output(tok: Any, r1: Reasoning, text: str) -> None:
    """Where vLLM's non-streaming and token-by-token streaming paths agree, we give the same."""
    from vllm.reasoning import ReasoningParserManager

    parser = ReasoningParserManager.get_reasoning_parser("deepseek_r1")(tok)
    want_r, want_a = parser.extract_reasoning(text, None)
    ids = ids_of(tok, text)
    streamed_r, streamed_a, prev_ids, prev_text = "", "", [], ""
    for piece, delta in per_token(tok, ids):
        msg = parser.extract_reasoning_streaming(prev_text, prev_text + piece, piece, prev_ids,
                                                 prev_ids + delta, delta)
        prev_ids, prev_text = prev_ids + delta, prev_text + piece
        if msg is not None:
            streamed_r += msg.reasoning or ""
            streamed_a += msg.content or ""
    assert (want_r or "", want_a or "") == (streamed_r, streamed_a)
    got_r, got_a, _ = run(r1, per_token(tok, ids))
    assert (got_r, got_a) == (want_r or "", want_a or "")


def test_random_tokens_never_close_the_tag(tok: Any, r1: Reasoning) -> None:
    """What a random-weight model emits: any tokens but the end tag; all of it is reasoning."""
    end = tok.convert_tokens_to_ids("</think>")
    rnd = random.Random(7)
    # Tokens whose text stands alone (no piece of a multi-byte character), so that every
    # cut of the sequence decodes to the same text, as vLLM's incremental detokenizer does.
    ids = [i for i in (rnd.randrange(len(tok)) for _ in range(400))
           if i != end and "\ufffd" not in tok.decode([i])][:150]
    assert "".join(tok.decode([i]) for i in ids) == tok.decode(ids)
    for deltas in chunkings(tok, ids, seed=3):
        reasoning, answer, n = run(r1, deltas)
        assert answer == "" and n == len(ids)
        assert reasoning.replace("<think>", "") == tok.decode(ids).replace("<think>", "")


def test_end_tag_text_split_across_deltas(tok: Any, r1: Reasoning) -> None:
    """vLLM holds text back for stop strings, so a tag's token and its text can arrive in
    different deltas; a tag spelled with ordinary tokens arrives in pieces too."""
    end = tok.convert_tokens_to_ids("</think>")
    # The end-tag token in the first delta, its text only in the next one.
    deltas = [("weigh it</th", [10, 11, end]), ("ink>\n\nIt is 4.", [12, 13])]
    sp = r1.splitter()
    first = sp.feed(*deltas[0])
    assert first == ("weigh it", "")  # "</th" is held back, not shown as reasoning
    assert sp.feed(*deltas[1]) == ("", "\n\nIt is 4.")
    assert sp.finish() == ("", "") and sp.reasoning_tokens == 3
    # The tag as plain text, no end-tag token: found all the same, tokens counted from text.
    plain = [("a plan </", [1, 2, 3]), ("think", [4]), ("> done", [5, 6])]
    assert run(r1, plain)[:2] == ("a plan ", " done")
    whole = run(r1, [("a plan </think> done", [1, 2, 3, 4, 5, 6])])
    assert whole == run(r1, plain)
    # A partial tag at the very end is reasoning after all.
    assert run(r1, [("cut off at </thi", [1, 2, 3])])[:2] == ("cut off at </thi", "")


def test_choices_split_independently(tok: Any, r1: Reasoning) -> None:
    a, b = r1.splitter(), r1.splitter()
    a.feed("x</think>y", ids_of(tok, "x</think>y"))
    assert b.feed("still thinking", ids_of(tok, "still thinking")) == ("still thinking", "")


def test_deepseek_v3_without_thinking_is_all_answer(tok: Any) -> None:
    """vLLM's deepseek_v3 parser splits only when the chat template's thinking flag is on,
    which this daemon does not set: the output is the answer."""
    reasoning = load_reasoning("deepseek_v3", tok, ["DeepseekV3ForCausalLM"])
    assert reasoning is not None and reasoning.name == V3
    text = "<think>x</think>y"
    assert run(reasoning, per_token(tok, ids_of(tok, text))) == (
        "", tok.decode(ids_of(tok, text)), 0)


R1_TEMPLATE = tiny_models.R1_CHAT_TEMPLATE
THINK_VOCAB = {"<think>": 1, "</think>": 2}
V31_TEMPLATE = ("{% if not thinking is defined %}{% set thinking = false %}{% endif %}"
                "{% if thinking %}{{'<｜Assistant｜><think>'}}{% else %}"
                "{{'<｜Assistant｜></think>'}}{% endif %}")
DISTILL_SWITCH = "{{'<｜Assistant｜><think>\\n'}}{% if not enable_thinking %}</think>{% endif %}"


@pytest.mark.parametrize("setting,arch,template,vocab,want", [
    ("auto", "Qwen2ForCausalLM", R1_TEMPLATE, THINK_VOCAB, R1),  # R1-Distill-Qwen
    ("auto", "DeepseekV3ForCausalLM", R1_TEMPLATE, THINK_VOCAB, R1),  # DeepSeek-R1
    ("auto", "LlamaForCausalLM", R1_TEMPLATE, THINK_VOCAB, R1),  # R1-Distill-Llama
    ("auto", "DeepseekV3ForCausalLM", V31_TEMPLATE, THINK_VOCAB, V3),  # V3.1 hybrid
    ("auto", "Qwen2ForCausalLM", DISTILL_SWITCH, THINK_VOCAB, R1),  # enable_thinking is not V3's
    ("auto", "DeepseekV3ForCausalLM", "{{ bos_token }}{{ m }}", THINK_VOCAB, None),  # V3 chat
    ("auto", "Qwen2ForCausalLM", R1_TEMPLATE, {}, None),  # no think tokens
    ("auto", "LlamaForCausalLM", "<|im_start|>{{ m }}", {}, None),  # SmolLM2
    ("none", "Qwen2ForCausalLM", R1_TEMPLATE, THINK_VOCAB, None),
    ("deepseek_r1", "LlamaForCausalLM", "", {}, R1),  # an explicit name is taken as given
])
def test_pick_parser(setting: str, arch: str, template: str, vocab: dict[str, int],
                     want: str | None) -> None:
    assert pick_parser(setting, [arch], template, vocab) == want


def test_unknown_parser_name_is_refused_with_the_choices() -> None:
    with pytest.raises(ReasoningError) as info:
        check_parser_name("deepseek_r2")
    msg = str(info.value)
    assert msg.startswith("engine.reasoning_parser:") and "'deepseek_r2'" in msg
    assert "deepseek_r1" in msg and "deepseek_v3" in msg
    check_parser_name("deepseek_r1")
    check_parser_name("auto")


def test_plain_model_gets_no_parser_and_a_forced_one_is_refused(base: Path) -> None:
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(str(base), local_files_only=True)  # SmolLM2
    assert load_reasoning("auto", plain, ["LlamaForCausalLM"]) is None
    with pytest.raises(ReasoningError, match=r"engine.reasoning_parser: 'deepseek_r1' does "
                                             r"not fit this model"):
        load_reasoning("deepseek_r1", plain, ["LlamaForCausalLM"])
