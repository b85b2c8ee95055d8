"""Automatic chat titles ([web] auto_title): after the first answer of a new chat started on
the chat page, the model is asked in the background for a short title, which replaces the
first-message title unless the user renamed the chat meanwhile.

The generation is the daemon's own: greedy, at most ``MAX_TOKENS`` tokens, never counted
against the user's quota, one at a time (``MAX_WAITING`` more may wait; beyond that a chat
keeps its first-message title), bounded by ``TIMEOUT_S``. Any failure (engine busy or gone,
a template that cannot render the prompt, an empty or unusable answer) keeps the title it
has. Neither the prompt nor the title is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Sequence
from typing import Any

from deepseekd.config import WebSettings
from deepseekd.domain.identity import Identity
from deepseekd.engine.types import Engine, GenerationOptions
from deepseekd.services.chat.reasoning import ReasoningSplits
from deepseekd.services.history import HistoryService
from deepseekd.services.lifecycle import Lifecycle

log = logging.getLogger("deepseekd.titles")

MAX_TOKENS = 16
MAX_CHARS = 80
TIMEOUT_S = 30.0
MAX_WAITING = 8
EXCERPTS = (600, 300, 120, 40)
"""Characters of the question and of the answer given to the model: the longest that fit
the model's context with room for the title."""
INSTRUCTION = (
    "You name chats. Reply with a title of at most six words for the chat the user shows "
    "you: the title only, no quotes, no punctuation at the end."
)
VIA = "web_session"
"""Titles are written for chats started on the chat page (a browser session): an API
client names its conversations itself, if at all, and pays for what it runs."""

_LABEL = re.compile(r"^\s*(?:#+\s*|\*\*|)?(?:title|chat title)\s*[:\-–]\s*", re.IGNORECASE)
_QUOTES = "\"'`“”‘’«»*_#"


def clean_title(raw: str) -> str:
    """The model's answer as a title: its first non-empty line, without a "Title:" label,
    quotes, Markdown marks or a final full stop, at most MAX_CHARS; "" when nothing is left."""
    line = next((ln for ln in raw.splitlines() if ln.strip(_QUOTES + " \t")), "")
    line = _LABEL.sub("", line)
    line = " ".join(line.split()).strip(_QUOTES + " ")
    line = line.rstrip(".:;,!-–— ").strip(_QUOTES + " ")
    line = "".join(ch for ch in line if ch.isprintable())
    if line.count('"') % 2:  # cut off inside a quotation (the token budget): no stray mark
        line = " ".join(line.replace('"', " ").split())
    if len(line) > MAX_CHARS:
        line = line[:MAX_CHARS].rsplit(" ", 1)[0] if " " in line[:MAX_CHARS] else line[:MAX_CHARS]
    return line.strip()


def _excerpt(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


class TitleWriter:
    """Writes titles in the background; ``close()`` cancels what is still running."""

    def __init__(self, cfg: WebSettings, life: Lifecycle, history: HistoryService) -> None:
        self._cfg = cfg
        self._life = life
        self._history = history
        self._one = asyncio.Semaphore(1)
        self._tasks: set[asyncio.Task[None]] = set()

    def wanted(self, who: Identity) -> bool:
        return self._cfg.auto_title and who.via == VIA

    def after_first_answer(
        self, who: Identity, conversation_id: str, messages: Sequence[dict[str, Any]], answer: str
    ) -> None:
        """The first answer of the new conversation is stored: title it in the background
        (when [web] auto_title is on and the chat was started on the chat page)."""
        if not self.wanted(who) or len(self._tasks) > MAX_WAITING:
            return
        question = next((str(m["content"]) for m in messages if m["role"] == "user"), "")
        task = asyncio.ensure_future(self._title(who, conversation_id, question, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Wait until every title in progress is written (or given up): for tests."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _title(self, who: Identity, conversation_id: str, question: str, answer: str) -> None:
        try:
            was = await self._history.title_sealed(who, conversation_id)
            if was is None:
                return
            async with self._one:
                async with asyncio.timeout(TIMEOUT_S):
                    title = clean_title(await self._generate(who, question, answer))
            if title:
                await self._history.set_generated_title(who, conversation_id, was, title)
        except Exception as exc:  # background work: whatever failed, the title stays
            # the first message's beginning. Never the text in the log.
            log.info("no automatic title", extra={"error": type(exc).__name__})

    async def _generate(self, who: Identity, question: str, answer: str) -> str:
        engine = self._life.engine_for_work()
        for limit in EXCERPTS:
            shown = f"Question: {_excerpt(question, limit)}\nAnswer: {_excerpt(answer, limit)}"
            ids = await self._encode(engine, shown)
            room = engine.max_model_len - len(ids)
            if room >= 4:
                return await self._run(engine, who, ids, min(MAX_TOKENS, room))
        return ""

    @staticmethod
    async def _encode(engine: Engine, shown: str) -> list[int]:
        try:
            return await engine.encode_chat(
                [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": shown}]
            )
        except (ValueError, TypeError, KeyError):  # a template without a system role
            return await engine.encode_chat(
                [{"role": "user", "content": f"{INSTRUCTION}\n\n{shown}"}]
            )

    async def _run(self, engine: Engine, who: Identity, ids: list[int], budget: int) -> str:
        options = GenerationOptions(
            max_tokens=budget, temperature=0.0, cache_salt=f"user-{who.user_id}"
        )
        split = ReasoningSplits(engine) if engine.reasoning_parser else None
        text = ""
        self._life.begin_work()  # the drain waits for it like for any generation
        try:
            gen = engine.generate(ids, options, f"title-{uuid.uuid4().hex}", stream=False)
            async with contextlib.aclosing(gen):
                async for step in gen:
                    if split is not None:
                        split(step)  # a reasoning model's thinking is not the title
                    text += "".join(d.text for d in step.choices if d.index == 0)
        finally:
            self._life.end_work()
        return text
