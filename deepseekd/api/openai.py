"""The OpenAI-compatible routes and the original design's ``POST /chat``. Handlers stay thin:
parse, ask the inference service, render."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from deepseekd.api.errors import APIError
from deepseekd.api.inference import Prepared
from deepseekd.api.middlewares import IDENTITY, QUOTA_STATE, REQUEST_ID, read_json
from deepseekd.api.render import (
    SSE_DONE,
    Accumulated,
    chat_logprobs,
    completion_logprobs,
    sse,
    usage,
)
from deepseekd.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    SimpleChatRequest,
    validate,
)
from deepseekd.engine.types import ChoiceDelta, GenerationStep
from deepseekd.keys import INFERENCE, LIFECYCLE, QUOTA

log = logging.getLogger("deepseekd.http")
routes = web.RouteTableDef()


async def _charge(request: web.Request, tokens: int) -> None:
    """Count a finished request's tokens where the caller has a daily token limit."""
    who, state = request.get(IDENTITY), request.get(QUOTA_STATE)
    quota = request.app[QUOTA]
    if who is not None and state is not None and quota.limits(who)[1] > 0:
        await quota.add_tokens(who, state.day, tokens)


async def _collect(
    request: web.Request, prepared: Prepared, rid: str
) -> tuple[list[Accumulated], int]:
    acc = [Accumulated() for _ in range(prepared.options.n)]
    prompt_tokens = 0
    async with contextlib.aclosing(request.app[INFERENCE].run(prepared, rid, stream=False)) as steps:
        async for step in steps:
            prompt_tokens = step.prompt_tokens
            for d in step.choices:
                acc[d.index].add(d)
    await _charge(request, prompt_tokens + sum(a.tokens for a in acc))
    return acc, prompt_tokens


async def _stream(
    request: web.Request,
    prepared: Prepared,
    rid: str,
    head: Callable[[int], dict[str, Any] | None],
    chunk: Callable[[ChoiceDelta, Accumulated], dict[str, Any]],
    envelope: Callable[[list[dict[str, Any]]], dict[str, Any]],
    include_usage: bool,
) -> web.StreamResponse:
    """Server-sent events: one chunk per engine delta, optional usage, then ``[DONE]``."""
    async with contextlib.aclosing(request.app[INFERENCE].run(prepared, rid, stream=True)) as steps:
        return await _write_events(request, steps, prepared.options.n, head, chunk, envelope,
                                   include_usage)


async def _write_events(
    request: web.Request,
    steps: AsyncIterator[GenerationStep],
    n: int,
    head: Callable[[int], dict[str, Any] | None],
    chunk: Callable[[ChoiceDelta, Accumulated], dict[str, Any]],
    envelope: Callable[[list[dict[str, Any]]], dict[str, Any]],
    include_usage: bool,
) -> web.StreamResponse:
    # Pull the first step before sending headers, so an immediate failure is a plain error.
    first = await anext(steps, None)
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                 "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    acc = [Accumulated() for _ in range(n)]
    prompt_tokens = 0

    def wrap(choices: list[dict[str, Any]]) -> dict[str, Any]:
        obj = envelope(choices)
        if include_usage:
            obj["usage"] = None
        return obj

    heads = [h for h in (head(i) for i in range(n)) if h is not None]
    if heads:
        await resp.write(sse(wrap(heads)))
    try:
        step = first
        while step is not None:
            prompt_tokens = step.prompt_tokens
            out = []
            for d in step.choices:
                out.append(chunk(d, acc[d.index]))
                acc[d.index].add(d)
            if out:
                await resp.write(sse(wrap(out)))
            step = await anext(steps, None)
    except APIError as exc:
        # Headers are gone: report in-band, the way OpenAI clients expect, then end.
        await resp.write(sse(exc.body()))
        await resp.write(SSE_DONE)
        return resp
    except ConnectionResetError:
        raise  # the client left
    except Exception:
        log.exception("internal error in stream", extra={"request_id": request[REQUEST_ID]})
        await resp.write(sse(APIError(500, "internal server error", code="internal_error").body()))
        await resp.write(SSE_DONE)
        return resp
    completion_tokens = sum(a.tokens for a in acc)
    await _charge(request, prompt_tokens + completion_tokens)
    if include_usage:
        final = envelope([])
        final["usage"] = usage(prompt_tokens, completion_tokens)
        await resp.write(sse(final))
    await resp.write(SSE_DONE)
    await resp.write_eof()
    return resp


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    svc = request.app[INFERENCE]
    req = validate(ChatCompletionRequest, await read_json(request))
    prepared = await svc.prepare_chat(req)
    rid = "chatcmpl-" + request[REQUEST_ID]
    created = int(time.time())

    def envelope(choices: list[dict[str, Any]], obj: str = "chat.completion.chunk") -> dict[str, Any]:
        return {"id": rid, "object": obj, "created": created, "model": prepared.model,
                "choices": choices}

    want_lp = prepared.options.logprobs is not None
    if req.stream:
        def head(i: int) -> dict[str, Any]:
            return {"index": i, "delta": {"role": "assistant", "content": ""},
                    "logprobs": None, "finish_reason": None}

        def chunk(d: ChoiceDelta, _: Accumulated) -> dict[str, Any]:
            return {"index": d.index, "delta": {"content": d.text} if d.text else {},
                    "logprobs": chat_logprobs(d.logprobs) if want_lp else None,
                    "finish_reason": d.finish_reason}

        return await _stream(request, prepared, rid, head, chunk, envelope, req.include_usage)

    acc, prompt_tokens = await _collect(request, prepared, rid)
    body = envelope(
        [
            {"index": i, "message": {"role": "assistant", "content": a.text},
             "logprobs": chat_logprobs(a.logprobs) if want_lp else None,
             "finish_reason": a.finish_reason}
            for i, a in enumerate(acc)
        ],
        obj="chat.completion",
    )
    body["usage"] = usage(prompt_tokens, sum(a.tokens for a in acc))
    return web.json_response(body)


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    svc = request.app[INFERENCE]
    req = validate(CompletionRequest, await read_json(request))
    prepared = await svc.prepare_completion(req)
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

        return await _stream(request, prepared, rid, lambda i: None, chunk, envelope,
                             req.include_usage)

    acc, prompt_tokens = await _collect(request, prepared, rid)
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
    return web.json_response({"object": "list", "data": data})


@routes.post("/chat")
async def simple_chat(request: web.Request) -> web.Response:
    """The original design's endpoint: ``{"prompt": "..."}`` → ``{"response": "..."}``."""
    svc = request.app[INFERENCE]
    req = validate(SimpleChatRequest, await read_json(request))
    prepared = await svc.prepare_simple(req.prompt, req.max_tokens)
    acc, _ = await _collect(request, prepared, "chat-" + request[REQUEST_ID])
    return web.json_response({"response": acc[0].text})
