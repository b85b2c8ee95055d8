"""The OpenAI-compatible routes and the original design's ``POST /chat``. Thin: the route
table has validated the body; the chat service admits and runs the request; render.

Durability and audit live in the chat service: a chat turn is sealed into the history
together with its audit event in one transaction, and only then does the client get the
answer (or, streaming, the last chunk and ``[DONE]``).
"""

from __future__ import annotations

from aiohttp import web

from deepseekd.http.body import body_of
from deepseekd.http.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    SimpleChatRequest,
)
from deepseekd.http.openai.render import ChatRender, CompletionRender
from deepseekd.http.openai.sse import stream
from deepseekd.http.state import CHAT, LIFECYCLE, LORA, caller


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Chat completion (OpenAI), streamed or not; the turn is kept in the caller's history."""
    req = body_of(request, ChatCompletionRequest)
    run = await request.app[CHAT].chat(caller(request), req, stream=req.stream)
    async with run:
        render = ChatRender(run)
        if req.stream:
            return await stream(request, run, render, req.include_usage)
        await run.collect()
        return web.json_response(render.body(), headers=run.headers)


async def completions(request: web.Request) -> web.StreamResponse:
    """Text completion (OpenAI), streamed or not; audited, not kept in history."""
    req = body_of(request, CompletionRequest)
    run = await request.app[CHAT].completion(caller(request), req, stream=req.stream)
    async with run:
        render = CompletionRender(run)
        if req.stream:
            return await stream(request, run, render, req.include_usage)
        await run.collect()
        return web.json_response(render.body())


async def models(request: web.Request) -> web.Response:
    """The served model and the LoRA adapters loaded on it that the caller may use."""
    life = request.app[LIFECYCLE]
    data = [
        {
            "id": life.model_name,
            "object": "model",
            "created": life.started_at,
            "owned_by": "deepseekd",
        }
    ]
    if life.engine is not None:
        data[0]["max_model_len"] = life.engine.max_model_len
    data += request.app[LORA].model_cards(life.model_name)
    who = caller(request).identity
    data = [card for card in data if request.app[CHAT].may_use(who, str(card["id"]))]
    return web.json_response({"object": "list", "data": data})


async def simple_chat(request: web.Request) -> web.Response:
    """The original design's endpoint: ``{"prompt": "..."}`` → ``{"response": "..."}``."""
    req = body_of(request, SimpleChatRequest)
    run = await request.app[CHAT].simple(
        caller(request), req.prompt, req.max_tokens, req.conversation_id
    )
    async with run:
        await run.collect()
        return web.json_response({"response": run.acc[0].text}, headers=run.headers)
