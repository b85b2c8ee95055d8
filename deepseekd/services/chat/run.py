"""One admitted inference request, from its first engine step to its closing record.

``async with run:`` guarantees the close, whatever happens inside, and exactly one closing
audit event:

* completed: the answer(s), every choice, sealed into the history with the ``inference``
  event in one transaction (a completion: its ``inference.completion`` event);
* stopped: the client stopped reading or left, a stream stalled, the user was erased: the
  engine request is aborted and an ``<action>.abort`` event records the tokens produced; a
  chat's partial answer is sealed too, marked stopped, so the question is not lost and the
  conversation goes on (not for an erased user: nothing of theirs is stored again);
* failed: the engine or the audit log failed: an ``<action>`` event with outcome error.

The tokens produced are charged in every case (leaving does not dodge a token limit). The
close runs as a task of its own, shielded from the caller's cancellation and counted in the
drain, so a client that read every chunk and then left still gets its turn recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from deepseekd.domain.audit import Event
from deepseekd.domain.errors import AuditUnavailable, DomainError, RateLimited
from deepseekd.domain.identity import Identity
from deepseekd.engine.types import ChoiceDelta, Engine, GenerationStep, TokenLogprob
from deepseekd.obs.metrics import Metrics
from deepseekd.services.audit import AuditLog
from deepseekd.services.chat.reasoning import ReasoningPolicy, ReasoningSplits
from deepseekd.services.chat.request import Caller, Prepared
from deepseekd.services.chat.tools import ToolSplits
from deepseekd.services.history import Erased, HistoryService, Replacement, TurnRecord
from deepseekd.services.lifecycle import Lifecycle
from deepseekd.services.usage import QuotaService

log = logging.getLogger("deepseekd.chat")


@dataclass
class Accumulated:
    """A choice's full output, gathered from deltas."""

    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    reasoning: str = ""
    reasoning_tokens: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """The calls made, in OpenAI's shape: {"id", "type": "function", "function": {...}}."""

    def add(self, d: ChoiceDelta) -> None:
        self.text += d.text
        self.tokens += d.token_count
        self.logprobs.extend(d.logprobs)
        if d.reasoning_tokens is not None:
            self.reasoning += d.reasoning
            self.reasoning_tokens = d.reasoning_tokens
        for tc in d.tool_calls:
            while len(self.tool_calls) <= tc.index:
                self.tool_calls.append(
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                )
            call = self.tool_calls[tc.index]
            if tc.id:
                call["id"] = tc.id
            if tc.name:
                call["function"]["name"] = tc.name
            call["function"]["arguments"] += tc.arguments
        if d.finish_reason is not None:
            self.finish_reason = d.finish_reason


@dataclass(frozen=True)
class Conversation:
    """Where a chat request's turn goes: the messages as sent, and the conversation."""

    messages: list[dict[str, Any]]
    id: str
    new: bool
    replace: Replacement | None = None
    """Editing or regenerating: the answer replaces this turn and every later one."""


@dataclass
class RunDeps:
    """What a run needs of the services around it (one per ChatService)."""

    audit: AuditLog
    history: HistoryService
    usage: QuotaService
    metrics: Metrics
    policy: ReasoningPolicy
    life: Lifecycle
    first_answer: Callable[[Identity, str, list[dict[str, Any]], str], None] | None = None
    """Told when a new conversation's first answer is stored (services/chat/titles)."""


class ChatRun:
    def __init__(
        self,
        deps: RunDeps,
        engine: Engine,
        caller: Caller,
        prepared: Prepared,
        *,
        action: str,
        run_id: str,
        stream: bool,
        conversation: Conversation | None,
        release: Callable[[], None],
    ) -> None:
        self._deps = deps
        self._admit: Callable[[Event], Awaitable[Any]] = deps.audit.append
        """Commits the stream's ``.start`` event (with the quota count: ``admit_with``)."""
        self._refused = False
        """The quota refused it at admission: audited there, nothing more to record."""
        self._engine = engine
        self.caller = caller
        self.prepared = prepared
        self.action = action
        self.id = run_id
        """The response id, and the engine's request id."""
        self.stream = stream
        self.conversation = conversation
        self._release = release
        self.created = int(time.time())
        self.acc = [Accumulated() for _ in range(prepared.options.n)]
        self.prompt_tokens = len(prepared.prompt_ids)
        self.cached_tokens: int | None = None
        """Prompt tokens found in the caller's prefix cache (None: not reported)."""
        self._first_token_at: float | None = None
        self._gen: AsyncGenerator[GenerationStep, None] | None = None
        self._started: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._stop_reason: str | None = None
        self._charged = False
        self._closing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._task = asyncio.current_task()
        self.on_closed: Callable[[ChatRun], None] = lambda run: None
        deps.life.begin_work()

    # -- what the protocol layer renders -------------------------------------------------

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Conversation-Id": self.conversation.id} if self.conversation else {}

    @property
    def show_reasoning(self) -> bool:
        return self._deps.policy.shown(self.caller.identity.role)

    @property
    def reasoning_parser(self) -> str | None:
        return self.prepared.reasoning_parser

    @property
    def completion_tokens(self) -> int:
        return sum(a.tokens for a in self.acc)

    @property
    def reasoning_tokens(self) -> int | None:
        """Reasoning tokens of all choices (None for a model without reasoning)."""
        if self.prepared.reasoning_parser is None:
            return None
        return sum(a.reasoning_tokens for a in self.acc)

    # -- running ---------------------------------------------------------------------

    def admit_with(self, admit: Callable[[Event], Awaitable[None]]) -> None:
        """Commit the stream's ``.start`` event with ``admit`` (the chat service counts the
        quota in the same transaction); before ``async with``."""
        self._admit = admit

    async def __aenter__(self) -> ChatRun:
        self._gen = self._steps()
        if self.stream:
            # The stream's audit record is committed while the engine computes the first
            # token: the fsync overlaps the prefill instead of adding to the time to first
            # token. No byte goes out before it is committed (fail closed).
            self._started = asyncio.ensure_future(self._audit_start())
            self._started.add_done_callback(lambda t: t.cancelled() or t.exception())
        return self

    async def _steps(self) -> AsyncGenerator[GenerationStep, None]:
        split = ReasoningSplits(self._engine) if self.prepared.reasoning_parser else None
        plan = self.prepared.tools
        calls = ToolSplits(plan, self._engine, stream=self.stream) if plan is not None else None
        gen = self._engine.generate(
            self.prepared.prompt_ids, self.prepared.options, self.id, stream=self.stream
        )
        async with contextlib.aclosing(gen):  # closing early makes the engine abort
            async for step in gen:
                if split is not None:
                    split(step)
                if calls is not None:
                    calls(step)
                yield step

    async def next_step(self) -> GenerationStep | None:
        """The engine's next step, already added to ``acc``; None when generation ended.
        Engine failures are DomainErrors (Unavailable, Invalid)."""
        assert self._gen is not None, "use the run as `async with run:`"
        try:
            step = await anext(self._gen, None)
        except DomainError as exc:
            self._error = exc
            raise
        if step is None:
            self._done = True
            return None
        if self._first_token_at is None and any(d.token_count for d in step.choices):
            self._first_token_at = time.monotonic()
        self.prompt_tokens = step.prompt_tokens
        if step.cached_tokens is not None:
            self.cached_tokens = step.cached_tokens
        for d in step.choices:
            self.acc[d.index].add(d)
        return step

    async def audit_started(self) -> None:
        """Streams: wait until the ``.start`` audit event is committed (Unavailable if not;
        RateLimited when the quota counted beside the prefill refused it)."""
        if self._started is not None:
            try:
                await self._started
            except DomainError as exc:
                self._error = exc
                self._refused = isinstance(exc, RateLimited)
                raise

    async def _audit_start(self) -> None:
        conv = self.conversation
        await self._admit(
            self._event(
                f"{self.action}.start",
                prompt_tokens=len(self.prepared.prompt_ids),
                target=f"conversation:{conv.id}" if conv else None,
            )
        )

    async def collect(self) -> None:
        """Run to the end and record the result (non-streaming requests)."""
        while await self.next_step() is not None:
            pass
        await self.finish()

    async def finish(self) -> None:
        """The answer is complete: charge it, make it durable and audited. Raises Unavailable
        (audit or database) when it cannot: the answer is not given as saved."""
        await asyncio.shield(self._close_task())

    def stop(self, reason: str) -> None:
        """End the run from outside (the user is being erased): its request is cancelled,
        the generation aborted, and the close records why."""
        self._stop_reason = reason
        if self._task is not None and self._closing is None:
            self._task.cancel()

    async def closed(self) -> None:
        """Wait until the run's close is done (whatever its outcome)."""
        await self._closed.wait()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if self._started is not None:
            self._started.cancel()  # a no-op once done; an early error need not wait for it
        try:
            if self._gen is not None:
                await self._gen.aclose()  # aborts the engine request if it still runs
            if isinstance(exc, DomainError) and self._error is None:
                self._error = exc
            with contextlib.suppress(DomainError):  # the caller has its own error to give
                await asyncio.shield(self._close_task())
        finally:
            self._release()

    # -- closing ---------------------------------------------------------------------

    def _close_task(self) -> asyncio.Task[None]:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())

            def done(task: asyncio.Task[None]) -> None:
                if not task.cancelled() and task.exception() is not None:
                    log.debug("run closed with an error", extra={"request_id": self.id})
                self._deps.life.end_work()
                self._closed.set()
                self.on_closed(self)

            self._closing.add_done_callback(done)
        return self._closing

    async def _close(self) -> None:
        if self._refused:
            return  # no quota counted, refusal audited: its prefill was only aborted
        await self._charge()
        if self._error is not None:
            await self._failed(self._error)
            return
        if not self._done or self._stop_reason is not None:
            await self._stopped()
            return
        try:
            await self._complete()
        except DomainError as exc:
            self._error = exc
            await self._failed(exc)
            raise

    async def _failed(self, error: BaseException) -> None:
        if isinstance(error, AuditUnavailable):
            return  # nothing can be recorded; the metric counted it
        with contextlib.suppress(DomainError):
            await self._deps.audit.append(
                self._event(
                    self.action,
                    outcome="error",
                    detail=type(error).__name__,
                    prompt_tokens=self.prompt_tokens,
                    completion_tokens=self.completion_tokens,
                )
            )

    async def _charge(self) -> None:
        """Count the tokens produced, finished or not (the day's usage and any token limit)."""
        if self._charged:
            return
        self._charged = True
        completion, thinking = self.completion_tokens, self.reasoning_tokens or 0
        self._deps.metrics.observe_generation(
            arrival=self.caller.arrival,
            first_token=self._first_token_at,
            last_token=time.monotonic(),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            reasoning_tokens=thinking,
            cached_tokens=self.cached_tokens or 0,
        )
        who, state, usage = self.caller.identity, self.caller.quota, self._deps.usage
        if state is not None:  # recorded limit or not: the day's usage tells the truth
            with contextlib.suppress(DomainError):  # a busy database must not lose the close
                await usage.add_tokens(
                    who, state.day, self.prompt_tokens + completion, reasoning_tokens=thinking
                )

    def _answers(self, stopped: bool) -> list[TurnRecord]:
        who, parser = self.caller.identity, self.prepared.reasoning_parser
        conv = self.conversation
        assert conv is not None
        mode = self._deps.policy.history_mode(who.role)
        return [
            TurnRecord(
                conv.messages,
                a.text,
                self.prepared.model,
                self.prompt_tokens,
                a.tokens,
                self.caller.request_id,
                self.caller.client,
                reasoning=a.reasoning if parser is not None else "",
                reasoning_tokens=a.reasoning_tokens if parser is not None else None,
                reasoning_history=mode if parser is not None else "drop",
                choice=i,
                stopped=stopped,
                tool_calls=a.tool_calls,
            )
            for i, a in enumerate(self.acc)
        ]

    def _record_event(self, action: str, answers: list[TurnRecord], **fields: Any) -> Event:
        """The closing event of a chat request: HMACs of the prompt and of the answers."""
        conv = self.conversation
        assert conv is not None
        event = self._deps.history.turn_event(self.caller.identity, conv.id, answers[0], action)
        event.completion_tokens = self.completion_tokens
        event.detail = (
            ", ".join(
                x
                for x in (
                    f"reasoning_tokens={self.reasoning_tokens}"
                    if self.reasoning_tokens is not None
                    else "",
                    f"choices={len(answers)}" if len(answers) > 1 else "",
                    f"replaced_from_seq={conv.replace.seq}" if conv.replace else "",
                    fields.pop("detail", ""),
                )
                if x
            )
            or None
        )
        if len(answers) > 1:  # one HMAC over every answer, in choice order
            event.answer_hmac = self._deps.audit.content_hmac(
                json.dumps([a.audited_answer for a in answers], ensure_ascii=False)
            )
        return event

    async def _complete(self) -> None:
        d, conv, who = self._deps, self.conversation, self.caller.identity
        if conv is None:
            await d.audit.append(
                self._event(
                    self.action,
                    prompt_tokens=self.prompt_tokens,
                    completion_tokens=self.completion_tokens,
                    answer_hmac=d.audit.content_hmac(self.acc[0].text),
                )
            )
            return
        answers = self._answers(stopped=False)
        await d.audit.write_with(
            "turn.seal",
            self._record_event(self.action, answers),
            lambda s: d.history.seal_in(s, who, conv.id, conv.new, answers, conv.replace),
        )
        if conv.new and d.first_answer is not None:
            d.first_answer(who, conv.id, conv.messages, answers[0].answer)

    async def _stopped(self) -> None:
        """Record a run that ended early: the abort event, and for a chat the partial
        answer marked stopped (not for an erased user)."""
        d, conv, who = self._deps, self.conversation, self.caller.identity
        reason = self._stop_reason or "the client left or stopped reading"
        action = f"{self.action}.abort"
        try:
            if conv is None or self._stop_reason == "erased":
                raise Erased("not stored")
            answers = self._answers(stopped=True)
            await d.audit.write_with(
                "turn.stop",
                self._record_event(action, answers, detail=reason),
                lambda s: d.history.seal_in(s, who, conv.id, conv.new, answers, conv.replace),
            )
        except Erased:
            with contextlib.suppress(DomainError):
                await d.audit.append(
                    self._event(
                        action,
                        outcome="stopped",
                        detail=reason,
                        prompt_tokens=self.prompt_tokens,
                        completion_tokens=self.completion_tokens,
                    )
                )
        except DomainError:
            log.error("a stopped answer could not be recorded", extra={"request_id": self.id})

    def _event(self, action: str, **fields: Any) -> Event:
        fields.setdefault("client", self.caller.client)
        return Event.by(
            self.caller.identity,
            action,
            request_id=self.caller.request_id,
            model=self.prepared.model,
            **fields,
        )
