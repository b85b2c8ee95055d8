"""Admitting an inference request: the engine must be able to take work, the server and the
caller must have room (``server.max_queued_requests``, ``server.max_concurrent_per_user``),
the request must be valid for this model, and the caller must have quota left — in that
order, so a request refused for any reason but its quota costs none. A quota refusal is
audited (``inference.refused``). For a chat stream the quota is counted in the same
transaction as its ``inference.start`` event, beside the prefill rather than before it:
the first byte waits for one commit that overlaps the engine's work, not for two in a row;
a stream the quota refuses has its prefill aborted and answers 429 before any byte. The runs
in flight are known per user, so an erasure can stop them (``stop_user``)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from deepseekd.config import Settings
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Invalid, RateLimited, Unavailable
from deepseekd.domain.identity import Identity
from deepseekd.engine.types import Engine
from deepseekd.obs.metrics import Metrics
from deepseekd.services.audit import AuditLog
from deepseekd.services.chat.prepare import Preparer
from deepseekd.services.chat.reasoning import ReasoningPolicy
from deepseekd.services.chat.request import Caller, ChatRequest, CompletionRequest, Prepared
from deepseekd.services.chat.run import ChatRun, Conversation, RunDeps
from deepseekd.services.chat.titles import TitleWriter
from deepseekd.services.history import HistoryService
from deepseekd.services.lifecycle import Lifecycle
from deepseekd.services.lora import LoraService
from deepseekd.services.rights import GroupRights
from deepseekd.services.usage import QuotaService, QuotaState
from deepseekd.store import Tx

RETRY_AFTER_S = 1


def cache_salt(caller: Caller) -> str:
    """One prefix cache per user: a request reuses cached blocks only of the same user's
    earlier prompts, so nobody learns another user's prompt from cache hits (or timing)."""
    return f"user-{caller.identity.user_id}"


STOP_WAIT_S = 30.0
"""How long an erasure waits for the user's stopped runs to finish closing."""


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
        rights: GroupRights | None = None,
    ) -> None:
        self._life = life
        self._rights = rights or GroupRights(())
        self._usage = usage
        self._history = history
        self._audit = audit
        self._metrics = metrics
        self._now = clock
        self._prepare = Preparer(settings.api, lora)
        self.titles = TitleWriter(settings.web, life, history)
        self._deps = RunDeps(
            audit,
            history,
            usage,
            metrics,
            ReasoningPolicy(settings.reasoning),
            life,
            self.titles.after_first_answer,
        )
        self.limit = settings.server.max_queued_requests
        """Inference requests admitted at once (generating or waiting); 0 = no limit."""
        self.per_user = settings.server.max_concurrent_per_user
        self.quota_lift: Callable[[Identity], Awaitable[int | None]] = _no_lift
        """A break-glass lifting this user's daily quota (its id), set by the container."""
        self.admitted = 0
        self._by_user: collections.Counter[int] = collections.Counter()
        self._runs: dict[int, set[ChatRun]] = collections.defaultdict(set)

    def may_use(self, who: Identity, model: str) -> bool:
        """Whether ``who``'s directory groups allow ``model`` (``GET /v1/models`` lists only
        those)."""
        return self._rights.may_use(who.groups, model)

    @property
    def policy(self) -> ReasoningPolicy:
        return self._deps.policy

    # -- the three kinds of request ------------------------------------------------------

    async def chat(self, caller: Caller, req: ChatRequest, *, stream: bool) -> ChatRun:
        """``POST /v1/chat/completions``: the turn goes into the caller's history."""
        engine = self._engine()
        release = self._admit(caller)
        try:
            self._rights.check_model(caller.identity, req.model or engine.model_name)
            prepared, messages = await self._prepare.chat(engine, req, cache_salt(caller))
            conv = await self._conversation(caller, req.conversation_id, messages, req.replace_from)
            if not stream:
                await self._count(caller)
        except BaseException:
            release()
            raise
        run = self._run(engine, caller, prepared, "inference", "chatcmpl-", stream, conv, release)
        if stream:
            run.admit_with(lambda start: self._count_and_start(caller, start))
        return run

    async def completion(self, caller: Caller, req: CompletionRequest, *, stream: bool) -> ChatRun:
        """``POST /v1/completions``: audited, not kept in history. A role that may not see
        a reasoning model's reasoning gets the answer without it here too."""
        engine = self._engine()
        release = self._admit(caller)
        try:
            self._rights.check_model(caller.identity, req.model or engine.model_name)
            hide = not self.policy.shown(caller.identity.role)
            prepared = await self._prepare.completion(
                engine, req, hide_reasoning=hide, salt=cache_salt(caller)
            )
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
        release = self._admit(caller)
        try:
            self._rights.check_model(caller.identity, engine.model_name)
            prepared = await self._prepare.simple(engine, prompt, max_tokens, cache_salt(caller))
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

    def _admit(self, caller: Caller) -> Callable[[], None]:
        """Take an admission slot (the server's and the caller's); the returned function
        gives them back (once)."""
        uid = caller.identity.user_id
        if self.limit and self.admitted >= self.limit:
            self._metrics.overload_rejections.inc()
            raise Unavailable(
                f"the server is at capacity ({self.limit} requests in "
                f"progress); retry after {RETRY_AFTER_S} s",
                code="server_overloaded",
                retry_after=RETRY_AFTER_S,
            )
        if self.per_user and self._by_user[uid] >= self.per_user:
            raise RateLimited(
                f"{self.per_user} of your requests are in progress, the most "
                "one identity may have at once; wait for one to finish",
                code="too_many_concurrent_requests",
                retry_after=RETRY_AFTER_S,
            )
        self.admitted += 1
        self._by_user[uid] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.admitted -= 1
                self._by_user[uid] -= 1
                if not self._by_user[uid]:
                    del self._by_user[uid]

        return release

    async def _conversation(
        self,
        caller: Caller,
        conversation_id: str | None,
        messages: list[dict[str, Any]],
        replace_from: str | None = None,
    ) -> Conversation:
        """Where the turn goes, checked before any quota is spent: one of the caller's
        conversations (and, replacing, one of its turns) or a new one."""
        if conversation_id is not None:
            who = caller.identity
            await self._history.check_conversation(who, conversation_id)
            replace = (
                await self._history.check_replace(who, conversation_id, replace_from)
                if replace_from is not None
                else None
            )
            return Conversation(messages, conversation_id, new=False, replace=replace)
        if replace_from is not None:
            raise Invalid(
                "replace_from: requires conversation_id (the conversation the turn is in)",
                field="replace_from",
            )
        return Conversation(messages, str(uuid.uuid4()), new=True)

    async def _count(self, caller: Caller) -> None:
        await self._settle(caller, await self._usage.consume(caller.identity))

    async def _count_and_start(self, caller: Caller, start: Event) -> None:
        """A chat stream's admission: the quota counted and ``inference.start`` appended in
        one transaction (or ``inference.refused``, then 429)."""

        def both(s: Tx) -> QuotaState:
            state = self._usage.consume_in(s, caller.identity)
            if state.allowed:
                self._audit.append_in(s, start)
            return state

        state = await self._audit.transaction("inference.start", both, start.action)
        await self._settle(caller, state)
        if not state.allowed:  # let through by a break-glass (_settle raises otherwise)
            await self._audit.append(start)

    async def _settle(self, caller: Caller, state: QuotaState) -> None:
        """Let a counted request through; a refused one through only under a break-glass
        lifting the quota (audited), else ``inference.refused`` and 429."""
        caller.quota = state
        if state.allowed:
            return
        lifted = await self.quota_lift(caller.identity)
        if lifted is not None:  # emergency access: let it through, on the record
            await self._audit.append(
                Event.by(
                    caller.identity,
                    "breakglass.quota",
                    target=f"user:{caller.identity.name}",
                    client=caller.client,
                    request_id=caller.request_id,
                    extra={"breakglass": lifted},
                )
            )
            caller.quota = dataclasses.replace(state, allowed=True)
            return
        self._metrics.quota_rejections.inc()
        what = "requests" if state.reason == "requests" else "tokens"
        await self._audit.append(
            Event.by(
                caller.identity,
                "inference.refused",
                outcome="denied",
                client=caller.client,
                request_id=caller.request_id,
                detail=f"daily quota of {what} reached",
            )
        )
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
        run = ChatRun(
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
        uid = caller.identity.user_id
        self._runs[uid].add(run)

        def closed(done: ChatRun) -> None:
            runs = self._runs.get(uid)
            if runs is not None:
                runs.discard(done)
                if not runs:
                    del self._runs[uid]

        run.on_closed = closed
        return run

    # -- erasure ---------------------------------------------------------------------

    async def stop_user(self, user_id: int, reason: str) -> int:
        """Stop every run of the user in flight here and wait (up to STOP_WAIT_S) until each
        has closed; returns how many were stopped."""
        runs = list(self._runs.get(user_id, ()))
        for run in runs:
            run.stop(reason)
        if runs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(r.closed() for r in runs)), STOP_WAIT_S)
        return len(runs)


async def _no_lift(_who: Identity) -> int | None:
    return None
