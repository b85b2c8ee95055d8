"""One admitted inference request, from its first engine step to its closing record.

``async with run:`` guarantees the close, whatever happens inside: the engine request is
aborted if it is still running, the tokens produced are charged (a client that leaves does
not dodge its token limit), and the request is recorded — the sealed turn with its
``inference`` audit event once it is complete, or an error event when it failed. The
closing work is shielded from the caller's cancellation and counted as in flight, so a
drain waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from deepseekd.domain.audit import Event
from deepseekd.domain.errors import AuditUnavailable, DomainError
from deepseekd.engine.types import ChoiceDelta, Engine, GenerationStep, TokenLogprob
from deepseekd.obs.metrics import Metrics
from deepseekd.services.audit import AuditLog
from deepseekd.services.chat.reasoning import ReasoningPolicy, ReasoningSplits
from deepseekd.services.chat.request import Caller, Prepared
from deepseekd.services.history import HistoryService, TurnRecord
from deepseekd.services.lifecycle import Lifecycle
from deepseekd.services.usage import QuotaService


@dataclass
class Accumulated:
    """A choice's full output, gathered from deltas."""

    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    reasoning: str = ""
    reasoning_tokens: int = 0

    def add(self, d: ChoiceDelta) -> None:
        self.text += d.text
        self.tokens += d.token_count
        self.logprobs.extend(d.logprobs)
        if d.reasoning_tokens is not None:
            self.reasoning += d.reasoning
            self.reasoning_tokens = d.reasoning_tokens
        if d.finish_reason is not None:
            self.finish_reason = d.finish_reason


@dataclass(frozen=True)
class Conversation:
    """Where a chat request's turn goes: the messages as sent, and the conversation."""

    messages: list[dict[str, str]]
    id: str
    new: bool


@dataclass
class RunDeps:
    """What a run needs of the services around it (one per ChatService)."""

    audit: AuditLog
    history: HistoryService
    usage: QuotaService
    metrics: Metrics
    policy: ReasoningPolicy
    life: Lifecycle


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
        self._first_token_at: float | None = None
        self._gen: AsyncGenerator[GenerationStep, None] | None = None
        self._started: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._charged = False
        self._closed = False
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
        gen = self._engine.generate(
            self.prepared.prompt_ids, self.prepared.options, self.id, stream=self.stream
        )
        async with contextlib.aclosing(gen):  # closing early makes the engine abort
            async for step in gen:
                if split is not None:
                    split(step)
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
            return None
        if self._first_token_at is None and any(d.token_count for d in step.choices):
            self._first_token_at = time.monotonic()
        self.prompt_tokens = step.prompt_tokens
        for d in step.choices:
            self.acc[d.index].add(d)
        return step

    async def audit_started(self) -> None:
        """Streams: wait until the ``.start`` audit event is committed (Unavailable if not)."""
        if self._started is not None:
            await self._started

    async def _audit_start(self) -> None:
        conv = self.conversation
        await self._deps.audit.append(
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
        """The answer is complete: charge it, then make it durable and audited. Raises
        Unavailable (audit or database) when it cannot: the answer is not given as saved."""
        try:
            await self._charge()
            await self._complete()
        except DomainError as exc:
            self._error = exc
            await self._close()
            raise
        self._closed = True

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if self._started is not None:
            self._started.cancel()  # a no-op once done; an early error need not wait for it
        try:
            if self._gen is not None:
                await self._gen.aclose()  # aborts the engine request if it still runs
            if not self._closed:
                if isinstance(exc, DomainError) and self._error is None:
                    self._error = exc
                await asyncio.shield(self._close())
        finally:
            self._release()
            self._deps.life.end_work()

    # -- closing ---------------------------------------------------------------------

    async def _close(self) -> None:
        """A run that did not finish: charge what it produced; record the failure."""
        self._closed = True
        await self._charge()
        if self._error is not None and not isinstance(self._error, AuditUnavailable):
            with contextlib.suppress(AuditUnavailable):
                await self._deps.audit.append(
                    self._event(self.action, outcome="error", detail=type(self._error).__name__)
                )

    async def _charge(self) -> None:
        """Count the tokens produced, finished or not, where the caller has a token limit."""
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
        )
        who, state, usage = self.caller.identity, self.caller.quota, self._deps.usage
        if state is not None and usage.charges_tokens(who):
            await usage.add_tokens(
                who, state.day, self.prompt_tokens + completion, reasoning_tokens=thinking
            )

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
        reasoning: dict[str, Any] = {}
        if self.prepared.reasoning_parser is not None:
            reasoning = {
                "reasoning": self.acc[0].reasoning,
                "reasoning_tokens": self.reasoning_tokens,
                "reasoning_history": d.policy.history_mode(who.role),
            }
        await d.history.record_turn(
            who,
            conv.id,
            conv.new,
            TurnRecord(
                conv.messages,
                self.acc[0].text,
                self.prepared.model,
                self.prompt_tokens,
                self.completion_tokens,
                self.caller.request_id,
                self.caller.client,
                **reasoning,
            ),
        )

    def _event(self, action: str, **fields: Any) -> Event:
        return Event.by(
            self.caller.identity,
            action,
            request_id=self.caller.request_id,
            client=self.caller.client,
            model=self.prepared.model,
            **fields,
        )
