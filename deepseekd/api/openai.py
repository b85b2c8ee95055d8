"""The OpenAI-compatible routes and the original design's ``POST /chat``. Handlers stay thin:
parse, ask the inference service, record, render.

Durability and audit: a chat turn is sealed into the history together with its audit event
in one transaction, and only then does the client get the answer (or, streaming, the last
chunk and ``[DONE]``). A stream first writes an ``inference.start`` audit event, so when
the audit log cannot be written the request fails with 503 before any output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from aiohttp import web

from deepseekd.api import reasoning
from deepseekd.api.errors import APIError, unavailable
from deepseekd.api.inference import Prepared
from deepseekd.api.middlewares import IDENTITY, QUOTA_STATE, REQUEST_ID, REQUEST_START, read_json
from deepseekd.api.render import (
    SSE_DONE,
    Accumulated,
    chat_logprobs,
    completion_logprobs,
    sse,
    usage,
)
from deepseekd.api.streaming import StallGuardedResponse
from deepseekd.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    SimpleChatRequest,
    validate,
)
from deepseekd.engine.types import ChoiceDelta, GenerationStep
from deepseekd.keys import AUDIT, HISTORY, INFERENCE, LIFECYCLE, LORA, METRICS, QUOTA, SETTINGS
from deepseekd.store.audit import AuditUnavailable, Event
from deepseekd.store.db import StoreUnavailable
from deepseekd.store.history import TurnRecord

log = logging.getLogger("deepseekd.http")
routes = web.RouteTableDef()

OnComplete = Callable[[list[Accumulated], int], Awaitable[None]]

AUDIT_DOWN = "the audit log cannot be written; no answer is given without an audit record"


@dataclass
class Recorder:
    """What happens around one inference request: audit, history, token quota."""

    request: web.Request
    prepared: Prepared
    action: str
    messages: list[dict[str, str]] | None = None
    conversation_id: str | None = None
    new_conversation: bool = False
    charged: bool = False
    first_token_at: float | None = None

    def saw_tokens(self, step: GenerationStep) -> None:
        if self.first_token_at is None and any(d.token_count for d in step.choices):
            self.first_token_at = time.monotonic()

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Conversation-Id": self.conversation_id} if self.conversation_id else {}

    def _event(self, action: str, **kw: Any) -> Event:
        who = self.request[IDENTITY]
        return Event(action=action, actor=who.name, actor_id=who.user_id, role=who.role,
                     request_id=self.request[REQUEST_ID], client=self.request.remote,
                     model=self.prepared.model, **kw)

    async def start(self) -> None:
        """Streams only: an audit record before the first byte, or a 503 (fail closed)."""
        try:
            await self.request.app[AUDIT].append(self._event(
                f"{self.action}.start", prompt_tokens=len(self.prepared.prompt_ids),
                target=f"conversation:{self.conversation_id}" if self.conversation_id else None))
        except AuditUnavailable:
            raise unavailable(AUDIT_DOWN, code="audit_unavailable") from None

    async def charge(self, acc: list[Accumulated], prompt_tokens: int) -> None:
        """Count the tokens produced, finished or not, where the caller has a token limit.
        Runs even when the client left mid-answer, so a disconnect does not dodge the limit."""
        if self.charged:
            return
        self.charged = True
        completion_tokens = sum(a.tokens for a in acc)
        thinking = sum(a.reasoning_tokens for a in acc)
        self.request.app[METRICS].observe_generation(
            arrival=self.request[REQUEST_START], first_token=self.first_token_at,
            last_token=time.monotonic(), prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, reasoning_tokens=thinking)
        who, state = self.request[IDENTITY], self.request.get(QUOTA_STATE)
        quota = self.request.app[QUOTA]
        if state is not None and quota.limits(who)[1] > 0:
            await asyncio.shield(quota.add_tokens(who, state.day, prompt_tokens + completion_tokens,
                                                  reasoning_tokens=thinking))

    async def complete(self, acc: list[Accumulated], prompt_tokens: int) -> None:
        """Make the request durable and audited; raises a 503 APIError when it cannot."""
        app = self.request.app
        completion_tokens = sum(a.tokens for a in acc)
        try:
            if self.messages is not None:
                await app[HISTORY].record_turn(
                    self.request[IDENTITY], self.conversation_id, self.new_conversation,
                    TurnRecord(self.messages, acc[0].text, self.prepared.model, prompt_tokens,
                               completion_tokens, self.request[REQUEST_ID], self.request.remote,
                               **reasoning.turn_fields(self.request, acc, self.prepared)))
            else:
                audit = app[AUDIT]
                await audit.append(self._event(
                    self.action, prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    answer_hmac=audit.content_hmac(acc[0].text)))
        except AuditUnavailable:
            raise unavailable(AUDIT_DOWN, code="audit_unavailable") from None
        except StoreUnavailable as exc:  # rolled back: the answer is not given as saved
            raise unavailable(str(exc), code="database_unavailable") from None

    async def failed(self, exc: BaseException) -> None:
        """Best effort: a request that ended in an error is audited too."""
        with contextlib.suppress(AuditUnavailable):
            await self.request.app[AUDIT].append(self._event(
                self.action, outcome="error", detail=type(exc).__name__))


async def _begin_conversation(request: web.Request, rec: Recorder, conversation_id: str | None,
                              messages: list[dict[str, str]]) -> None:
    rec.messages = messages
    if conversation_id is not None:
        await request.app[HISTORY].check_conversation(request[IDENTITY], conversation_id)
        rec.conversation_id = conversation_id
    else:
        rec.conversation_id, rec.new_conversation = str(uuid.uuid4()), True


async def _collect(request: web.Request, rec: Recorder, rid: str) -> tuple[list[Accumulated], int]:
    prepared = rec.prepared
    acc = [Accumulated() for _ in range(prepared.options.n)]
    prompt_tokens = len(prepared.prompt_ids)
    try:
        run = request.app[INFERENCE].run(prepared, rid, stream=False)
        async with contextlib.aclosing(run) as steps:
            async for step in steps:
                rec.saw_tokens(step)
                prompt_tokens = step.prompt_tokens
                for d in step.choices:
                    acc[d.index].add(d)
    except APIError as exc:
        await rec.failed(exc)
        raise
    finally:
        await rec.charge(acc, prompt_tokens)
    await rec.complete(acc, prompt_tokens)
    return acc, prompt_tokens


async def _stream(
    request: web.Request,
    rec: Recorder,
    rid: str,
    head: Callable[[int], dict[str, Any] | None],
    chunk: Callable[[ChoiceDelta, Accumulated], dict[str, Any]],
    envelope: Callable[[list[dict[str, Any]]], dict[str, Any]],
    include_usage: bool,
) -> web.StreamResponse:
    # The stream's audit record is committed while the engine computes the first token: the
    # fsync overlaps the prefill instead of adding to the time to first token. No byte goes
    # out before it is committed (fail closed).
    started = asyncio.ensure_future(rec.start())
    started.add_done_callback(lambda t: t.cancelled() or t.exception())  # always retrieved
    try:
        run = request.app[INFERENCE].run(rec.prepared, rid, stream=True)
        async with contextlib.aclosing(run) as steps:
            return await _write_events(request, rec, steps, started, head, chunk, envelope,
                                       include_usage)
    finally:
        started.cancel()  # a no-op once done; an early error need not wait for the audit


async def _write_events(
    request: web.Request,
    rec: Recorder,
    steps: AsyncIterator[GenerationStep],
    started: Awaitable[None],
    head: Callable[[int], dict[str, Any] | None],
    chunk: Callable[[ChoiceDelta, Accumulated], dict[str, Any]],
    envelope: Callable[[list[dict[str, Any]]], dict[str, Any]],
    include_usage: bool,
) -> web.StreamResponse:
    """Server-sent events: one chunk per engine delta; the last one, the usage and
    ``[DONE]`` only after the request is durable."""
    n = rec.prepared.options.n
    # Pull the first step before sending headers, so an immediate failure is a plain error.
    try:
        first = await anext(steps, None)
    except APIError as exc:
        await rec.failed(exc)
        raise
    await started  # the stream's audit record is committed, or a 503 before any byte
    resp = StallGuardedResponse(request, request.app[SETTINGS].server.stream_stall_timeout_s,
                                headers={"Content-Type": "text/event-stream",
                                         "Cache-Control": "no-cache",
                                         "X-Accel-Buffering": "no", **rec.headers})
    await resp.prepare(request)
    acc = [Accumulated() for _ in range(n)]
    prompt_tokens = len(rec.prepared.prompt_ids)

    def wrap(choices: list[dict[str, Any]]) -> dict[str, Any]:
        obj = envelope(choices)
        if include_usage:
            obj["usage"] = None
        return obj

    heads = [h for h in (head(i) for i in range(n)) if h is not None]
    if heads:
        await resp.write(sse(wrap(heads)))
    held: bytes | None = None
    try:
        step = first
        while step is not None:
            rec.saw_tokens(step)
            prompt_tokens = step.prompt_tokens
            out = []
            for d in step.choices:
                out.append(chunk(d, acc[d.index]))
                acc[d.index].add(d)
            if out:
                event = sse(wrap(out))
                if step.finished:
                    held = event  # the closing chunk waits for the commit
                else:
                    await resp.write(event)
            step = await anext(steps, None)
        await rec.charge(acc, prompt_tokens)
        await rec.complete(acc, prompt_tokens)
    except APIError as exc:
        # Headers are gone: report in-band, the way OpenAI clients expect, then end.
        await rec.charge(acc, prompt_tokens)
        if exc.code != "audit_unavailable":
            await rec.failed(exc)
        await resp.write(sse(exc.body()))
        await resp.write(SSE_DONE)
        return resp
    except (ConnectionResetError, asyncio.CancelledError):
        await rec.charge(acc, prompt_tokens)  # the client left: what it got still counts
        raise
    except Exception:
        await rec.charge(acc, prompt_tokens)
        log.exception("internal error in stream", extra={"request_id": request[REQUEST_ID]})
        await resp.write(sse(APIError(500, "internal server error", code="internal_error").body()))
        await resp.write(SSE_DONE)
        return resp
    if held is not None:
        await resp.write(held)
    if include_usage:
        final = envelope([])
        final["usage"] = usage(prompt_tokens, sum(a.tokens for a in acc),
                               reasoning.reasoning_tokens(acc, rec.prepared.reasoning_parser))
        await resp.write(sse(final))
    await resp.write(SSE_DONE)
    await resp.write_eof()
    return resp


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = validate(ChatCompletionRequest, await read_json(request))
    prepared = await request.app[INFERENCE].prepare_chat(req)
    rec = Recorder(request, prepared, "inference")
    await _begin_conversation(request, rec, req.conversation_id,
                              [{"role": m.role, "content": m.content} for m in req.messages])
    rid = "chatcmpl-" + request[REQUEST_ID]
    created = int(time.time())

    def envelope(choices: list[dict[str, Any]], obj: str = "chat.completion.chunk") -> dict[str, Any]:
        return {"id": rid, "object": obj, "created": created, "model": prepared.model,
                "choices": choices}

    parser, show = prepared.reasoning_parser, reasoning.shown(request)
    want_lp = prepared.options.logprobs is not None and (show or parser is None)
    if req.stream:
        def head(i: int) -> dict[str, Any]:
            return {"index": i, "delta": {"role": "assistant", "content": ""},
                    "logprobs": None, "finish_reason": None}

        def chunk(d: ChoiceDelta, _: Accumulated) -> dict[str, Any]:
            return {"index": d.index,
                    "delta": {**({"content": d.text} if d.text else {}),
                              **reasoning.delta_fields(d, show)},
                    "logprobs": chat_logprobs(d.logprobs) if want_lp else None,
                    "finish_reason": d.finish_reason}

        return await _stream(request, rec, rid, head, chunk, envelope, req.include_usage)

    acc, prompt_tokens = await _collect(request, rec, rid)
    body = envelope(
        [
            {"index": i, "message": {"role": "assistant", "content": a.text,
                                     **reasoning.message_fields(a, parser, show)},
             "logprobs": chat_logprobs(a.logprobs) if want_lp else None,
             "finish_reason": a.finish_reason}
            for i, a in enumerate(acc)
        ],
        obj="chat.completion",
    )
    body["usage"] = usage(prompt_tokens, sum(a.tokens for a in acc),
                          reasoning.reasoning_tokens(acc, parser))
    return web.json_response(body, headers=rec.headers)


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    req = validate(CompletionRequest, await read_json(request))
    prepared = await request.app[INFERENCE].prepare_completion(req)
    rec = Recorder(request, prepared, "inference.completion")
    rid = "cmpl-" + request[REQUEST_ID]
    created = int(time.time())

    def envelope(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": rid, "object": "text_completion", "created": created,
                "model": prepared.model, "choices": choices}

    want_lp = prepared.options.logprobs is not None
    if req.stream:
        def chunk(d: ChoiceDelta, so_far: Accumulated) -> dict[str, Any]:
            return {"index": d.index, "text": d.text,
                    "logprobs": completion_logprobs(d.logprobs, len(so_far.text)) if want_lp else None,
                    "finish_reason": d.finish_reason}

        return await _stream(request, rec, rid, lambda i: None, chunk, envelope,
                             req.include_usage)

    acc, prompt_tokens = await _collect(request, rec, rid)
    body = envelope(
        [
            {"index": i, "text": a.text,
             "logprobs": completion_logprobs(a.logprobs, 0) if want_lp else None,
             "finish_reason": a.finish_reason}
            for i, a in enumerate(acc)
        ]
    )
    body["usage"] = usage(prompt_tokens, sum(a.tokens for a in acc))
    return web.json_response(body)


@routes.get("/v1/models")
async def models(request: web.Request) -> web.Response:
    life = request.app[LIFECYCLE]
    data = [{"id": life.model_name, "object": "model", "created": life.started_at,
             "owned_by": "deepseekd"}]
    if life.engine is not None:
        data[0]["max_model_len"] = life.engine.max_model_len
    data += request.app[LORA].model_cards(life.model_name)
    return web.json_response({"object": "list", "data": data})


@routes.post("/chat")
async def simple_chat(request: web.Request) -> web.Response:
    """The original design's endpoint: ``{"prompt": "..."}`` → ``{"response": "..."}``."""
    req = validate(SimpleChatRequest, await read_json(request))
    prepared = await request.app[INFERENCE].prepare_simple(req.prompt, req.max_tokens)
    rec = Recorder(request, prepared, "inference")
    await _begin_conversation(request, rec, req.conversation_id,
                              [{"role": "user", "content": req.prompt}])
    acc, _ = await _collect(request, rec, "chat-" + request[REQUEST_ID])
    return web.json_response({"response": acc[0].text}, headers=rec.headers)
