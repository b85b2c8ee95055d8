"""Admitting an inference request: the engine must be able to take work, the server must
have room (``server.max_queued_requests``), the request must be valid for this model, and
the caller must have quota left — in that order, so a request refused for any reason but
its quota costs none."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from deepseekd.config import Settings
from deepseekd.domain.errors import RateLimited, Unavailable
from deepseekd.engine.types import Engine
from deepseekd.obs.metrics import Metrics
from deepseekd.services.audit import AuditLog
from deepseekd.services.chat.prepare import Preparer
from deepseekd.services.chat.reasoning import ReasoningPolicy
from deepseekd.services.chat.request import Caller, ChatRequest, CompletionRequest, Prepared
from deepseekd.services.chat.run import ChatRun, Conversation, RunDeps
from deepseekd.services.history import HistoryService
from deepseekd.services.lifecycle import Lifecycle
from deepseekd.services.lora import LoraService
from deepseekd.services.usage import QuotaService

RETRY_AFTER_S = 1


class ChatService:
    def __init__(
        self,
        settings: Settings,
        life: Lifecycle,
        usage: QuotaService,
        history: HistoryService,
        audit: AuditLog,
        lora: LoraService,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self._life = life
        self._usage = usage
        self._history = history
        self._metrics = metrics
        self._now = clock
        self._prepare = Preparer(settings.api, lora)
        self._deps = RunDeps(
            audit, history, usage, metrics, ReasoningPolicy(settings.reasoning), life
        )
        self.limit = settings.server.max_queued_requests
        """Inference requests admitted at once (generating or waiting); 0 = no limit."""
        self.admitted = 0

    @property
    def policy(self) -> ReasoningPolicy:
        return self._deps.policy

    # -- the three kinds of request ------------------------------------------------------

    async def chat(self, caller: Caller, req: ChatRequest, *, stream: bool) -> ChatRun:
        """``POST /v1/chat/completions``: the turn goes into the caller's history."""
        engine = self._engine()
        release = self._admit()
        try:
            prepared, messages = await self._prepare.chat(engine, req)
            conv = await self._conversation(caller, req.conversation_id, messages)
            await self._count(caller)
        except BaseException:
            release()
            raise
        return self._run(engine, caller, prepared, "inference", "chatcmpl-", stream, conv, release)

    async def completion(self, caller: Caller, req: CompletionRequest, *, stream: bool) -> ChatRun:
        """``POST /v1/completions``: audited, not kept in history."""
        engine = self._engine()
        release = self._admit()
        try:
            prepared = await self._prepare.completion(engine, req)
            await self._count(caller)
        except BaseException:
            release()
            raise
        return self._run(
            engine, caller, prepared, "inference.completion", "cmpl-", stream, None, release
        )

    async def simple(
        self, caller: Caller, prompt: str, max_tokens: int | None, conversation_id: str | None
    ) -> ChatRun:
        """The original design's ``POST /chat``: one user message, kept in history."""
        engine = self._engine()
        release = self._admit()
        try:
            prepared = await self._prepare.simple(engine, prompt, max_tokens)
            conv = await self._conversation(
                caller, conversation_id, [{"role": "user", "content": prompt}]
            )
            await self._count(caller)
        except BaseException:
            release()
            raise
        return self._run(engine, caller, prepared, "inference", "chat-", False, conv, release)

    # -- admission -------------------------------------------------------------------

    def _engine(self) -> Engine:
        return self._life.engine_for_work()  # a 503 while warming up costs no quota

    def _admit(self) -> Callable[[], None]:
        """Take an admission slot; the returned function gives it back (once)."""
        if self.limit and self.admitted >= self.limit:
            self._metrics.overload_rejections.inc()
            raise Unavailable(
                f"the server is at capacity ({self.limit} requests in "
                f"progress); retry after {RETRY_AFTER_S} s",
                code="server_overloaded",
                retry_after=RETRY_AFTER_S,
            )
        self.admitted += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.admitted -= 1

        return release

    async def _conversation(
        self, caller: Caller, conversation_id: str | None, messages: list[dict[str, str]]
    ) -> Conversation:
        if conversation_id is not None:
            await self._history.check_conversation(caller.identity, conversation_id)
            return Conversation(messages, conversation_id, new=False)
        return Conversation(messages, str(uuid.uuid4()), new=True)

    async def _count(self, caller: Caller) -> None:
        state = await self._usage.consume(caller.identity)
        caller.quota = state
        if not state.allowed:
            self._metrics.quota_rejections.inc()
            what = "requests" if state.reason == "requests" else "tokens"
            raise RateLimited(
                f"daily quota of {what} reached; it resets at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(state.reset_at))}",
                code="daily_quota_exceeded",
                retry_after=max(1, state.reset_at - int(self._now())),
            )

    def _run(
        self,
        engine: Engine,
        caller: Caller,
        prepared: Prepared,
        action: str,
        prefix: str,
        stream: bool,
        conv: Conversation | None,
        release: Callable[[], None],
    ) -> ChatRun:
        return ChatRun(
            self._deps,
            engine,
            caller,
            prepared,
            action=action,
            run_id=prefix + caller.request_id,
            stream=stream,
            conversation=conv,
            release=release,
        )
