"""``POST /v1/responses``: OpenAI's Responses API, stateless, run as a chat completion (the
turn goes into the caller's history, counts against the quota and is audited like any chat).

The answer is a ``response`` object whose ``output`` holds, in order: the reasoning (a
``reasoning`` item with ``reasoning_text`` content, when the model reasons and the caller's
role may see it), the text (a ``message`` item), and the calls the model made
(``function_call`` items, their ``call_id`` to answer with a ``function_call_output``).

Streamed, it is server-sent events with an ``event:`` line each, numbered by
``sequence_number``: ``response.created``, ``response.in_progress``, then per output item
``response.output_item.added``, its deltas and its ``.done`` events, and last
``response.completed`` (``response.incomplete`` when ``max_output_tokens`` cut it short)
with the whole response; the last step's events and the closing one wait until the turn is
sealed into the history, as chat's closing chunk does. A failure after the headers is an
``error`` event, then ``response.failed``.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from aiohttp import web

from deepseekd.domain.errors import DomainError
from deepseekd.engine.types import ChoiceDelta, GenerationStep, ToolCallDelta
from deepseekd.http.body import body_of
from deepseekd.http.errors import APIError, from_domain
from deepseekd.http.openai.responses_protocol import (
    FunctionChoice,
    ResponsesRequest,
    as_chat,
    renamed,
)
from deepseekd.http.openai.sse import StallGuardedResponse, drive, open_stream
from deepseekd.http.state import CHAT, caller
from deepseekd.services.chat import ChatRun

log = logging.getLogger("deepseekd.http")


async def responses(request: web.Request) -> web.StreamResponse:
    """Responses API (OpenAI), stateless, streamed or not; run as a chat completion, so the
    turn is kept in the caller's history."""
    req = body_of(request, ResponsesRequest)
    chat = as_chat(req)
    try:
        run = await request.app[CHAT].chat(caller(request), chat, stream=req.stream)
        async with run:
            render = ResponsesRender(run, req)
            if req.stream:
                return await stream(request, run, render)
            await run.collect()
            return web.json_response(render.body(), headers=run.headers)
    except DomainError as exc:
        if exc.field is None:
            raise
        raise renamed(from_domain(exc)) from None  # "messages" → "input", ...


# --------------------------------------------------------------------------- items


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": status,
    }


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


class ResponsesRender:
    """The ``response`` object of one run (one choice: n is always 1 here)."""

    def __init__(self, run: ChatRun, req: ResponsesRequest) -> None:
        self.run = run
        self.req = req
        self.show_reasoning = run.reasoning_parser is not None and run.show_reasoning
        self.id = "resp_" + run.caller.request_id

    def item_id(self, prefix: str, index: int) -> str:
        return f"{prefix}_{self.run.caller.request_id}_{index}"

    def status(self) -> str:
        return "incomplete" if self.run.acc[0].finish_reason == "length" else "completed"

    def usage(self) -> dict[str, Any]:
        run = self.run
        return {
            "input_tokens": run.prompt_tokens,
            "input_tokens_details": {"cached_tokens": run.cached_tokens or 0},
            "output_tokens": run.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": run.reasoning_tokens or 0},
            "total_tokens": run.prompt_tokens + run.completion_tokens,
        }

    def _echo(self) -> dict[str, Any]:
        """What the request asked for, as OpenAI echoes it in the response."""
        req = self.req
        choice: Any = req.tool_choice or ("auto" if req.tools else "none")
        if isinstance(choice, FunctionChoice):
            choice = {"type": "function", "name": choice.name}
        fmt = req.text.format if req.text is not None else None
        return {
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": {
                "format": {"type": "text"}
                if fmt is None
                else fmt.model_dump(by_alias=True, exclude_none=True)
            },
            "tool_choice": choice,
            "tools": [t.model_dump() for t in req.tools or []],
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "user": req.user,
            "metadata": req.metadata or {},
        }

    def envelope(
        self, status: str, output: list[dict[str, Any]], error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        done = status in ("completed", "incomplete")
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.run.created,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete"
            else None,
            "model": self.run.prepared.model,
            "output": output,
            "previous_response_id": None,
            "reasoning": None,
            "store": False,
            "truncation": "disabled",
            **self._echo(),
            "usage": self.usage() if done else None,
        }

    def output(self) -> list[dict[str, Any]]:
        """The output items of the finished run: reasoning, text, calls; the last one is
        incomplete when the answer was cut short."""
        a, rid = self.run.acc[0], self.run.caller.request_id
        kinds: list[tuple[str, Any]] = []
        if self.show_reasoning and a.reasoning:
            kinds.append(("rs", a.reasoning))
        if a.text or not (a.tool_calls or kinds):
            kinds.append(("msg", a.text))
        kinds += [("fc", c) for c in a.tool_calls]
        out = []
        for i, (kind, value) in enumerate(kinds):
            status = self.status() if i == len(kinds) - 1 else "completed"
            item_id = f"{kind}_{rid}_{i}"
            if kind == "rs":
                out.append(reasoning_item(item_id, value, status))
            elif kind == "msg":
                out.append(message_item(item_id, value, status))
            else:
                fn = value["function"]
                out.append(call_item(item_id, value["id"], fn["name"], fn["arguments"], status))
        return out

    def body(self) -> dict[str, Any]:
        return self.envelope(self.status(), self.output())


# --------------------------------------------------------------------------- streaming


def event_bytes(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


class ResponseEvents:
    """The events of one streamed response. Events wait in ``pending`` until ``flush``
    numbers and writes them, so the last step's can be held back until the turn is sealed."""

    def __init__(self, resp: StallGuardedResponse, render: ResponsesRender) -> None:
        self.resp = resp
        self.render = render
        self.output: list[dict[str, Any]] = []
        """Every item begun so far, in order; the last one may still be open."""
        self._open: dict[str, Any] | None = None
        self._call = -1  # the tool-call index of the open item, when it is a call
        self._seq = 0
        self._pending: list[dict[str, Any]] = []

    def emit(self, kind: str, **fields: Any) -> None:
        # Items and parts change as text arrives: an event carries them as they are now.
        self._pending.append({"type": kind, **copy.deepcopy(fields)})

    async def flush(self) -> None:
        if not self._pending:
            return
        chunks = []
        for event in self._pending:
            event["sequence_number"] = self._seq
            self._seq += 1
            chunks.append(event_bytes(event))
        self._pending.clear()
        await self.resp.write(b"".join(chunks))

    def start(self) -> None:
        for kind in ("response.created", "response.in_progress"):
            self.emit(kind, response=self.render.envelope("in_progress", []))

    def add(self, d: ChoiceDelta) -> None:
        """One delta of the run's (only) choice as item deltas, opening items as needed."""
        if d.reasoning and self.render.show_reasoning:
            part = self._item("rs")["content"][0]
            part["text"] += d.reasoning
            self._delta("response.reasoning_text.delta", d.reasoning)
        if d.text:
            part = self._item("msg")["content"][0]
            part["text"] += d.text
            self._delta("response.output_text.delta", d.text, logprobs=[])
        for tc in d.tool_calls:
            item = self._call_item(tc)
            if tc.arguments:
                item["arguments"] += tc.arguments
                self.emit(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=len(self.output) - 1,
                    delta=tc.arguments,
                )

    def _delta(self, kind: str, delta: str, **extra: Any) -> None:
        assert self._open is not None
        self.emit(
            kind,
            item_id=self._open["id"],
            output_index=len(self.output) - 1,
            content_index=0,
            delta=delta,
            **extra,
        )

    def _begin(self, item: dict[str, Any]) -> dict[str, Any]:
        self.close("completed")
        self._open = item
        self.output.append(item)
        index = len(self.output) - 1
        part = item.get("content")
        if part is not None:
            item["content"] = []
        self.emit("response.output_item.added", output_index=index, item=item)
        if part is not None:
            item["content"] = part
            self.emit(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part[0],
            )
        return item

    def _item(self, kind: str) -> dict[str, Any]:
        """The open reasoning ("rs") or message ("msg") item, begun if another is open."""
        item = self._open
        if item is not None and item["id"].startswith(kind + "_"):
            return item
        item_id = self.render.item_id(kind, len(self.output))
        make = reasoning_item if kind == "rs" else message_item
        return self._begin(make(item_id, "", "in_progress"))

    def _call_item(self, tc: ToolCallDelta) -> dict[str, Any]:
        item = self._open
        if item is not None and item["type"] == "function_call" and self._call == tc.index:
            return item
        call = self.render.run.acc[0].tool_calls[tc.index]  # has the call's id and name
        item_id = self.render.item_id("fc", len(self.output))
        item = self._begin(
            call_item(item_id, call["id"], call["function"]["name"], "", "in_progress")
        )
        self._call = tc.index
        return item

    def close(self, status: str) -> None:
        """End the open item (its ``.done`` events)."""
        item, index = self._open, len(self.output) - 1
        if item is None:
            return
        self._open, self._call = None, -1
        item["status"] = status
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "function_call":
            self.emit("response.function_call_arguments.done", **where, arguments=item["arguments"])
        else:
            part = item["content"][0]
            if item["type"] == "message":
                self.emit(
                    "response.output_text.done",
                    **where,
                    content_index=0,
                    text=part["text"],
                    logprobs=[],
                )
            else:
                self.emit(
                    "response.reasoning_text.done", **where, content_index=0, text=part["text"]
                )
            self.emit("response.content_part.done", **where, content_index=0, part=part)
        self.emit("response.output_item.done", output_index=index, item=item)

    async def complete(self) -> None:
        """The last item's end, and the whole response (after the turn was sealed)."""
        status = self.render.status()
        if not self.output:
            self._item("msg")  # an empty answer is still a message, as unstreamed
        self.close(status)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        self.emit(kind, response=self.render.envelope(status, self.output))
        await self.flush()
        await self.resp.write_eof()

    async def fail(self, err: APIError) -> None:
        """Headers are gone: report in-band (what was held back is dropped), then end."""
        self._pending.clear()
        self.emit("error", code=err.code, message=err.message, param=err.param)
        code = "rate_limit_exceeded" if err.status == 429 else "server_error"
        error = {"code": code, "message": err.message}
        self.emit("response.failed", response=self.render.envelope("failed", [], error))
        await self.flush()


async def stream(request: web.Request, run: ChatRun, render: ResponsesRender) -> web.StreamResponse:
    """Stream ``run`` (entered already) as the Responses API's server-sent events."""
    step, resp = await open_stream(request, run)
    out = ResponseEvents(resp, render)
    out.start()
    await out.flush()

    async def emit(step: GenerationStep) -> None:
        for d in step.choices:
            out.add(d)
        if not step.finished:  # the last step's events wait for the commit
            await out.flush()

    if await drive(request, run, step, emit, out.fail):
        await out.complete()
    return resp
