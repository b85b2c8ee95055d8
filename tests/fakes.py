"""A small deterministic engine for HTTP tests: the ``Engine`` protocol without vLLM.

Tokenization is one token per whitespace-separated word. Generation emits
``tok0 tok1 ...`` (choice ``i`` of an ``n > 1`` request emits ``c{i}w0 c{i}w1 ...``),
exactly ``max_tokens`` tokens with finish_reason ``"length"``, unless a stop string
appears: then the text ends right before it with finish_reason ``"stop"``.
"""

from __future__ import annotations

import asyncio
import json
import re
from types import SimpleNamespace
from typing import Any, AsyncIterator, Callable, Sequence

from deepseekd.engine.reasoning import ReasoningSplitter
from deepseekd.engine.tools import ToolCallSplitter
from deepseekd.engine.types import (
    ChoiceDelta,
    EngineRejected,
    EngineStats,
    EngineUnavailable,
    GenerationOptions,
    GenerationStep,
    TokenLogprob,
)

TEMPLATE_START = "<|im_start|>"
TEMPLATE_ASSISTANT = "<|assistant|>"


def token_text(j: int, index: int = 0, n: int = 1) -> str:
    """The text of output token ``j`` of choice ``index`` (a leading space after the first)."""
    word = f"tok{j}" if n == 1 else f"c{index}w{j}"
    return word if j == 0 else " " + word


def expected_text(max_tokens: int, index: int = 0, n: int = 1, stop: Sequence[str] = ()) -> str:
    """The full text the fake produces for one choice (before any stop string)."""
    text = "".join(token_text(j, index, n) for j in range(max_tokens))
    cut = [text.find(s) for s in stop if s and s in text]
    return text[: min(cut)] if cut else text


def chosen_logprob(j: int) -> float:
    return -0.25 * (j % 4 + 1)


class FakeR1Parser:
    """The text rule of vLLM's DeepSeek-R1 parser (``extract_reasoning``), without vLLM: the
    reasoning runs from an optional ``<think>`` to ``</think>``; no end tag, all reasoning."""

    reasoning_start_str = "<think>"
    reasoning_end_str = "</think>"

    def extract_reasoning(self, text: str, request: object) -> tuple[str | None, str | None]:
        before, tag, after = text.partition("<think>")
        text = after if tag else before
        if "</think>" not in text:
            return text, None
        reasoning, _, answer = text.partition("</think>")
        return reasoning, answer or None


class FakeEngine:
    """Deterministic engine; ``async with FakeEngine() as e``.

    Test hooks:
      * ``fail_after``: raise EngineUnavailable (and turn dead) once that many tokens of a
        request were produced and another one would follow.
      * ``token_delay``: seconds to sleep between tokens (drain / disconnect tests).
      * ``start_gate``: an asyncio.Event ``__aenter__`` waits on (phase "loading").
      * ``generate_gate``: an asyncio.Event every generation waits on first (phase "warming").
      * ``aborted``: request ids whose generator was closed or cancelled before finishing.
      * ``requests``: (prompt_ids, options, stream) per generate call; ``request_ids`` in step.
      * ``completed``: request ids that ran to the end.
      * ``think``: a reasoning model. The output starts with ``<think>``, then ``think``
        reasoning words (``r0 r1 ...``), then ``</think>``, then the usual tokens; with
        ``think_open`` the chat template is taken to have opened ``<think>`` already (as
        DeepSeek-R1's does), so the output starts with the reasoning words. ``think_close``
        False never closes the tag. The engine then reports the parser ``fake_r1``.
      * ``echo``: the answer repeats the last user message word by word (one word per token,
        joined by single spaces) and ends with finish_reason ``"stop"`` after its last word
        (or ``"length"`` at ``max_tokens``), instead of ``tok0 tok1 ...``. With
        ``echo_exact`` the message's whitespace (newlines included) is kept: each token is a
        word with the whitespace before it, so Markdown tables and code blocks come back whole.
      * ``script``: the answer is this text (or what the function returns for the request's
        options), 4 characters per token, ending with ``"stop"`` (``"length"`` if
        ``max_tokens`` runs out first): structured outputs and tool calls in HTTP tests.
      * ``tool_parser``: the name of a tool parser; ``FakeToolParser`` reads calls written
        ``<call>{"name": ..., "arguments": {...}}</call>`` out of the text (tool_choice auto).
      * ``knows_tools``: the chat template renders a tools list.
      * ``chats``: (messages, tools, continue_final) per encode_chat call.
      * Prefix cache: a prompt's tokens shared with an earlier prompt of the same
        ``cache_salt`` are reported as cached.
    """

    def __init__(
        self,
        *,
        model_name: str = "fake-model",
        max_model_len: int = 64,
        device: str = "cpu",
        fail_after: int | None = None,
        token_delay: float = 0.0,
        start_gate: asyncio.Event | None = None,
        generate_gate: asyncio.Event | None = None,
        echo: bool = False,
        echo_exact: bool = False,
        think: int | None = None,
        think_open: bool = False,
        think_close: bool = True,
        keep_history: bool = True,
        script: str | Callable[[GenerationOptions], str] | None = None,
        tool_parser: str | None = None,
        knows_tools: bool = False,
    ) -> None:
        self._model_name = model_name
        self._max_model_len = max_model_len
        self._device = device
        self.fail_after = fail_after
        self.token_delay = token_delay
        self.start_gate = start_gate
        self.generate_gate = generate_gate
        self.echo = echo
        self.echo_exact = echo_exact
        self.think = think
        self.think_open = think_open
        self.think_close = think_close
        self.keep_history = keep_history  # False in long-running processes (soak): no growth
        self._echo_words: dict[tuple[int, ...], list[str]] = {}
        self._dead = False
        self.entered = False
        self.exited = False
        self.aborted: set[str] = set()
        self.completed: list[str] = []
        self.requests: list[tuple[list[int], GenerationOptions, bool]] = []
        self.request_ids: list[str] = []
        self._vocab: dict[str, int] = {}
        self.in_flight = 0
        self.script = script
        self.tool_parser = tool_parser
        self.chat_template_knows_tools = knows_tools
        self.tool_parser_keeps_special_tokens = False
        self.chats: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None, bool]] = []
        self._cache: dict[str | None, list[tuple[int, ...]]] = {}
        self.adapters: dict[str, str] = {}
        """Loaded LoRA adapters: name -> folder (``requests`` shows which one a request used)."""
        self.reject_adapters = False

    # -- context manager -------------------------------------------------------------

    async def __aenter__(self) -> "FakeEngine":
        if self.start_gate is not None:
            await self.start_gate.wait()
        self.entered = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exited = True

    # -- Engine protocol -------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def device(self) -> str:
        return self._device

    @property
    def vocab_size(self) -> int:
        return 50_000

    def tool_call_splitter(self, tools: Sequence[dict[str, Any]], *, stream: bool
                           ) -> ToolCallSplitter | None:
        if self.tool_parser is None:
            return None
        return ToolCallSplitter(FakeToolParser(), None, stream=stream)

    def _cached(self, prompt_ids: list[int], salt: str | None) -> int:
        """Tokens of this prompt an earlier prompt with the same salt began with."""
        seen = self._cache.setdefault(salt, [])
        best = 0
        for old in seen:
            k = 0
            while k < min(len(old), len(prompt_ids)) and old[k] == prompt_ids[k]:
                k += 1
            best = max(best, k)
        key = tuple(prompt_ids)
        if len(seen) < 1000 and key not in seen:  # a repeated prompt adds nothing to match
            seen.append(key)
        return min(best, len(prompt_ids) - 1)

    @property
    def dead(self) -> bool:
        return self._dead

    def kill(self) -> None:
        self._dead = True

    async def check_health(self) -> None:
        if self._dead:
            raise EngineUnavailable("the fake engine died")

    def stats(self) -> EngineStats:
        """Generations in flight count as running; the fake has no queue or KV cache."""
        return EngineStats(running=self.in_flight, waiting=0, kv_cache_usage=0.0)

    async def add_adapter(self, name: str, path: str) -> None:
        if self.reject_adapters:
            raise EngineRejected("the fake engine rejects adapters")
        self.adapters[name] = path

    async def remove_adapter(self, name: str) -> None:
        self.adapters.pop(name, None)

    @property
    def reasoning_parser(self) -> str | None:
        return "fake_r1" if self.think is not None else None

    def reasoning_splitter(self) -> ReasoningSplitter | None:
        if self.think is None:
            return None
        return ReasoningSplitter(FakeR1Parser(), self._ids(["</think>"])[0],
                                 lambda text: len(text.split()))

    def _think_tokens(self) -> list[str]:
        """The reasoning part of the output, token by token."""
        if self.think is None:
            return []
        words = [f"r{k}" if k == 0 else f" r{k}" for k in range(self.think)]
        return ([] if self.think_open else ["<think>"]) + words + (
            ["</think>"] if self.think_close else [])

    def _ids(self, words: Sequence[str]) -> list[int]:
        return [self._vocab.setdefault(w, len(self._vocab)) for w in words]

    async def encode_chat(self, messages: Sequence[dict[str, Any]], *,
                          tools: Sequence[dict[str, Any]] | None = None,
                          continue_final: bool = False) -> list[int]:
        if self.keep_history:
            self.chats.append(([dict(m) for m in messages], list(tools) if tools else None,
                               continue_final))
        words = [TEMPLATE_START]
        for m in messages:
            words.extend(f"{m['role']}: {m.get('content') or ''}".split())
        if not continue_final:
            words.append(TEMPLATE_ASSISTANT)
        ids = self._ids(words)
        if self.echo:
            last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            if len(self._echo_words) > 10_000:  # a long-running process: stay bounded
                self._echo_words.clear()
            self._echo_words[tuple(ids)] = (
                re.findall(r"\s*\S+", str(last)) if self.echo_exact else str(last).split()
            ) or [""]
        return ids

    async def encode_text(self, prompt: str) -> list[int]:
        return self._ids(prompt.split())

    def _logprobs(self, j: int, text: str, k: int | None) -> list[TokenLogprob]:
        if k is None:
            return []
        top = [(text, chosen_logprob(j))] + [
            (f" alt{a}", chosen_logprob(j) - 1.0 - a) for a in range(1, k)
        ]
        return [TokenLogprob(token=text, logprob=chosen_logprob(j), top=tuple(top[:k]))]

    async def generate(
        self, prompt_ids: list[int], options: GenerationOptions, request_id: str, *, stream: bool
    ) -> AsyncIterator[GenerationStep]:
        if self.keep_history:
            self.requests.append((list(prompt_ids), options, stream))
            self.request_ids.append(request_id)
        if self._dead:
            raise EngineUnavailable("the fake engine is not running")
        if options.adapter is not None and options.adapter not in self.adapters:
            raise EngineRejected(f"model: no LoRA adapter named {options.adapter!r} is loaded")
        finished = False
        self.in_flight += 1
        try:
            if self.generate_gate is not None:
                await self.generate_gate.wait()
            n = options.n
            texts = [""] * n
            emitted = [0] * n  # characters already sent per choice
            done: list[str | None] = [None] * n
            finals = [ChoiceDelta(index=i, text="", token_count=0) for i in range(n)]
            # Like vLLM, hold back text that could be the start of a stop string.
            hold = max((len(s) for s in options.stop if s), default=1) - 1
            produced = 0
            echo_words = (self._echo_words.get(tuple(prompt_ids), [""])
                          if self.echo else None)
            script = self.script(options) if callable(self.script) else self.script
            if script is not None:
                echo_words = [script[k:k + 4] for k in range(0, len(script), 4)] or [""]
            cached = self._cached(prompt_ids, options.cache_salt)
            thinking = self._think_tokens()
            while not all(done):
                if self.fail_after is not None and produced >= self.fail_after:
                    self._dead = True
                    raise EngineUnavailable("the fake engine died mid-request")
                if produced:
                    if self.token_delay:
                        await asyncio.sleep(self.token_delay)
                    await asyncio.sleep(0)
                deltas: list[ChoiceDelta] = []
                for i in range(n):
                    if done[i]:
                        continue
                    if produced < len(thinking):
                        tok = thinking[produced]
                    elif echo_words is not None:
                        word = echo_words[produced - len(thinking)]
                        exact = script is not None or self.echo_exact
                        tok = word if produced == len(thinking) or exact else " " + word
                    else:
                        tok = token_text(produced - len(thinking), i, n)
                    texts[i] += tok
                    cut = [texts[i].find(s) for s in options.stop if s and s in texts[i]]
                    if cut:
                        texts[i] = texts[i][: min(cut)]
                        done[i] = "stop"
                    elif echo_words is not None and produced + 1 >= len(thinking) + len(echo_words):
                        done[i] = "stop"
                    elif produced + 1 >= options.max_tokens:
                        done[i] = "length"
                    end = len(texts[i]) if done[i] else max(emitted[i], len(texts[i]) - hold)
                    piece = texts[i][emitted[i]:end]
                    emitted[i] = end
                    d = ChoiceDelta(
                        index=i,
                        text=piece,
                        token_count=1,
                        finish_reason=done[i],
                        logprobs=self._logprobs(produced, tok, options.logprobs),
                        token_ids=self._ids([tok.strip()]),
                    )
                    deltas.append(d)
                    if not stream:  # the whole answer, handed out once at the end
                        f = finals[i]
                        f.text += d.text
                        f.token_count += 1
                        f.logprobs.extend(d.logprobs)
                        f.token_ids = [*f.token_ids, *d.token_ids]
                        f.finish_reason = d.finish_reason
                produced += 1
                last = all(done)
                if stream:
                    if last:
                        finished = True
                    yield GenerationStep(choices=deltas, prompt_tokens=len(prompt_ids),
                                         finished=last, cached_tokens=cached)
            if not stream:
                finished = True
                yield GenerationStep(choices=finals, prompt_tokens=len(prompt_ids), finished=True,
                                     cached_tokens=cached)
            if self.keep_history:
                self.completed.append(request_id)
        except (GeneratorExit, asyncio.CancelledError):
            if not finished and self.keep_history:
                self.aborted.add(request_id)
            raise
        finally:
            self.in_flight -= 1


class FakeToolParser:
    """Calls written ``<call>{"name": "f", "arguments": {...}}</call>`` (the ToolFormat that
    deepseekd.engine.tools.ToolCallSplitter drives; vLLM's parsers have the same shape)."""

    START, END = "<call>", "</call>"

    def __init__(self) -> None:
        self._sent = 0  # calls handed out
        self._shown = 0  # characters of content handed out

    @staticmethod
    def _calls(text: str) -> list[dict[str, Any]]:
        out = []
        for m in re.finditer(r"<call>(.*?)</call>", text, re.S):
            obj = json.loads(m.group(1))
            out.append({"name": obj["name"], "arguments": json.dumps(obj.get("arguments", {}))})
        return out

    def extract_tool_calls(self, model_output: str, request: object) -> Any:
        calls = self._calls(model_output)
        content = re.sub(r"<call>.*?</call>", "", model_output, flags=re.S).strip() or None
        return SimpleNamespace(
            tools_called=bool(calls),
            content=content,
            tool_calls=[SimpleNamespace(id=f"call_fake{i}", function=SimpleNamespace(**c))
                        for i, c in enumerate(calls)],
        )

    def extract_tool_calls_streaming(self, previous_text: str, current_text: str,
                                     delta_text: str, previous_token_ids: Sequence[int],
                                     current_token_ids: Sequence[int],
                                     delta_token_ids: Sequence[int], request: object) -> Any:
        calls = self._calls(current_text)
        if len(calls) > self._sent:
            new = calls[self._sent:]
            first = self._sent
            self._sent = len(calls)
            return SimpleNamespace(content=None, tool_calls=[
                SimpleNamespace(index=first + k, id=f"call_fake{first + k}",
                                function=SimpleNamespace(name=c["name"], arguments=c["arguments"]))
                for k, c in enumerate(new)])
        visible = re.sub(r"<call>.*?</call>", "", current_text, flags=re.S)
        open_at = visible.find(self.START)
        if open_at != -1:
            visible = visible[:open_at]  # inside a call: hold the text back
        else:
            for k in range(len(self.START) - 1, 0, -1):
                if visible.endswith(self.START[:k]):  # maybe a call beginning
                    visible = visible[:-k]
                    break
        text, self._shown = visible[self._shown:], max(self._shown, len(visible))
        if not text:
            return None
        return SimpleNamespace(content=text, tool_calls=[])

    def get_remaining_unstreamed_args(self) -> str:
        return ""


__all__ = ["FakeEngine", "FakeR1Parser", "FakeToolParser", "chosen_logprob", "expected_text",
           "token_text"]
