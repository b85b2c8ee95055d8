"""tool_choice "auto" with vLLM's own tool parsers (no engine): the parser picked from the chat
template, and the splitter moving calls out of the answer, whole and token by token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm")

from deepseekd.engine.tools import ToolCallSplitter, pick_tool_parser  # noqa: E402
from deepseekd.engine.types import ChoiceDelta  # noqa: E402
from deepseekd.engine.vllm_tools import (  # noqa: E402
    ToolParserError,
    check_tool_parser_name,
    load_tool_parsing,
)
from tests.support import tiny_models  # noqa: E402

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
HERMES_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if tools %}Call tools as <tool_call>{json}</tool_call>{% endif %}<|im_start|>assistant\n"
)
V3_CALLS = ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
            "<｜tool▁call▁end｜>", "<｜tool▁sep｜>")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.base_tokenizer(tmp_path_factory.mktemp("tok") / "smollm2")


def hermes_tokenizer(base: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    tok.chat_template = HERMES_TEMPLATE
    return tok


def v3_tokenizer(base: Path, template: str) -> Any:
    tok = tiny_models.r1_tokenizer(base)
    tok.add_tokens(list(V3_CALLS), special_tokens=True)
    tok.chat_template = template
    return tok


def run(splitter: ToolCallSplitter, tok: Any, text: str, *, stream: bool) -> tuple[str, list]:
    """Feed ``text`` as the engine would (token by token when streaming); returns the content
    and the calls put together as a client does."""
    ids = tok.encode(text, add_special_tokens=False)
    pieces: list[tuple[str, list[int]]] = []
    if stream:
        shown = ""
        for k in range(1, len(ids) + 1):
            now = tok.decode(ids[:k], skip_special_tokens=False)
            pieces.append((now[len(shown):], ids[k - 1:k]))
            shown = now
    else:
        pieces.append((tok.decode(ids, skip_special_tokens=False), ids))
    content, calls = "", {}
    for n, (piece, piece_ids) in enumerate(pieces):
        d = ChoiceDelta(index=0, text=piece, token_ids=piece_ids, token_count=len(piece_ids),
                        finish_reason="stop" if n == len(pieces) - 1 else None)
        splitter.split(d)
        content += d.text
        for tc in d.tool_calls:
            cur = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            cur["id"] = cur["id"] or tc.id
            cur["name"] = cur["name"] or tc.name
            cur["arguments"] += tc.arguments or ""
    return content, [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("stream", [False, True])
def test_hermes_calls_leave_the_text(base: Path, stream: bool) -> None:
    tok = hermes_tokenizer(base)
    parsing = load_tool_parsing("auto", tok)
    assert parsing is not None and parsing.name == "hermes"
    text = ('Checking.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '</tool_call>')
    content, calls = run(parsing.splitter([WEATHER], stream=stream), tok, text, stream=stream)
    assert content.strip() == "Checking."
    (call,) = calls
    assert call["name"] == "get_weather" and call["id"]
    assert json.loads(call["arguments"]) == {"city": "Paris"}


@pytest.mark.parametrize("stream", [False, True])
def test_plain_answer_passes_through(base: Path, stream: bool) -> None:
    tok = hermes_tokenizer(base)
    parsing = load_tool_parsing("hermes", tok)
    assert parsing is not None
    content, calls = run(parsing.splitter([WEATHER], stream=stream), tok,
                         "It is sunny in Paris today.", stream=stream)
    assert content == "It is sunny in Paris today." and calls == []


def test_deepseek_v3_calls(base: Path) -> None:
    template = "{{ bos_token }}<｜tool▁calls▁begin｜>```json{{ messages }}"
    tok = v3_tokenizer(base, template)
    parsing = load_tool_parsing("auto", tok)
    assert parsing is not None and parsing.name == "deepseek_v3"
    assert parsing.keeps_special_tokens  # its markers are special tokens: keep them
    text = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
            '```json\n{"city": "Oslo"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
    content, calls = run(parsing.splitter([WEATHER], stream=False), tok, text, stream=False)
    assert content == ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Oslo"})]


def test_picked_from_the_template(base: Path) -> None:
    assert pick_tool_parser("auto", tiny_models.R1_CHAT_TEMPLATE) is None  # no tool branch
    assert pick_tool_parser("auto", "x<｜tool▁calls▁begin｜>```json") == "deepseek_v3"
    assert pick_tool_parser("auto", "x<｜tool▁calls▁begin｜>") == "deepseek_v31"
    assert pick_tool_parser("auto", "<tool_call>") == "hermes"
    assert pick_tool_parser("auto", "<|python_tag|>") == "llama3_json"
    assert pick_tool_parser("none", "<tool_call>") is None
    assert pick_tool_parser("mistral", "") == "mistral"
    assert load_tool_parsing("auto", tiny_models.r1_tokenizer(base)) is None


def test_wrong_parser_names_are_refused(base: Path) -> None:
    check_tool_parser_name("hermes")
    with pytest.raises(ToolParserError, match="no tool parser 'hermez'"):
        check_tool_parser_name("hermez")
    # deepseek_v3 named explicitly on a tokenizer without its markers: refused at start.
    with pytest.raises(ToolParserError, match="does not fit this model"):
        load_tool_parsing("deepseek_v3", hermes_tokenizer(base))


def test_distills_fall_back_to_their_base_vocabulary(base: Path) -> None:
    """R1-Distill-Qwen: R1's template (DeepSeek's markers) over a Qwen tokenizer that lacks
    them, so vLLM's deepseek_v3 parser refuses it; its Qwen vocabulary has <tool_call>, so
    hermes reads the calls. R1-Distill-Llama's Llama vocabulary gets llama3_json."""
    from deepseekd.engine.tools import tool_parser_candidates

    r1_template = "{{ bos_token }}<｜tool▁calls▁begin｜>```json{{ messages }}"
    assert tool_parser_candidates("auto", r1_template, {"<tool_call>": 1}) == [
        "deepseek_v3", "hermes"]
    assert tool_parser_candidates("auto", r1_template, {"<|python_tag|>": 1}) == [
        "deepseek_v3", "llama3_json"]
    assert tool_parser_candidates("auto", "plain", {}) == []
    assert tool_parser_candidates("none", r1_template, {"<tool_call>": 1}) == []
    assert tool_parser_candidates("hermes", "plain", {}) == ["hermes"]

    tok = tiny_models.r1_tokenizer(base)
    tok.add_tokens(["<tool_call>", "</tool_call>"], special_tokens=True)
    tok.chat_template = r1_template
    parsing = load_tool_parsing("auto", tok)
    assert parsing is not None and parsing.name == "hermes"
    assert parsing.keeps_special_tokens
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Nice"}}\n</tool_call>'
    content, calls = run(parsing.splitter([WEATHER], stream=True), tok, text, stream=True)
    assert content.strip() == ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Nice"})]
