"""Server-sent events: one chunk per engine step; the closing chunk, the usage and
``[DONE]`` only after the run is durable and audited (``ChatRun.finish``).

A client that stops reading is given up on: aiohttp waits for the socket to drain without a
limit, so each write here waits at most ``server.stream_stall_timeout_s``; past that the
connection is aborted and the write raises ConnectionResetError, which ends the run like any
client that left (tokens charged, generation aborted).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from deepseekd.domain.errors import DomainError
from deepseekd.engine.types import ChoiceDelta, GenerationStep
from deepseekd.http.errors import APIError, from_domain
from deepseekd.http.openai.render import run_usage
from deepseekd.http.state import REQUEST_ID, SETTINGS
from deepseekd.services.chat import Accumulated, ChatRun

log = logging.getLogger("deepseekd.http")

SSE_DONE = b"data: [DONE]\n\n"


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""``json.dumps`` with these arguments, without building an encoder per event."""


def sse(obj: Any) -> bytes:
    return b"data: " + _encode(obj).encode() + b"\n\n"


class Render(Protocol):
    def envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]: ...
    def head(self, i: int) -> dict[str, Any] | None: ...
    def chunk(self, d: ChoiceDelta, so_far: Accumulated) -> dict[str, Any]: ...


class StallGuardedResponse(web.StreamResponse):
    """A streamed response that gives up on a client that stopped reading."""

    def __init__(self, request: web.Request, stall_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._request = request
        self._stall_timeout_s = stall_timeout_s

    async def _guard(self, write: Any) -> None:
        try:
            async with asyncio.timeout(self._stall_timeout_s):
                await write
        except TimeoutError:
            log.warning(
                "client stopped reading a stream; ending it",
                extra={"stall_timeout_s": self._stall_timeout_s},
            )
            if self._request.transport is not None:
                self._request.transport.abort()
                # With handler cancellation (the daemon's runner) the lost connection cancels
                # this handler on the next turn of the loop, like any client that left.
                await asyncio.sleep(0)
            raise ConnectionResetError("the client stopped reading the stream") from None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        transport = self._request.transport
        if transport is not None and not transport.get_write_buffer_size() and len(data) < 16384:
            # Nothing queued: the socket took everything so far and this small write cannot
            # fill the buffer to its high-water mark, so it cannot wait on the client. Skip
            # the timer (one per token held a streaming core to ~23,000 tokens/s, ~32,000
            # without: bench/daemon_ceiling.py).
            await super().write(data)
            return
        await self._guard(super().write(data))

    async def write_eof(self, data: bytes = b"") -> None:
        await self._guard(super().write_eof(data))


class _Events:
    """The events of one stream: envelopes (with ``usage: null`` when the client asked for
    usage), written to the response."""

    def __init__(self, resp: StallGuardedResponse, render: Render, include_usage: bool) -> None:
        self.resp = resp
        self.render = render
        self.include_usage = include_usage

    def event(self, choices: list[dict[str, Any]]) -> bytes:
        obj = self.render.envelope(choices)
        if self.include_usage:
            obj["usage"] = None
        return sse(obj)

    async def close(self, run: ChatRun, held: bytes | None) -> None:
        """The closing chunk (held back until the run was recorded), usage, ``[DONE]``."""
        if held is not None:
            await self.resp.write(held)
        if self.include_usage:
            final = self.render.envelope([])
            final["usage"] = run_usage(run)
            await self.resp.write(sse(final))
        await self.resp.write(SSE_DONE)
        await self.resp.write_eof()

    async def fail(self, err: APIError) -> None:
        """Headers are gone: report in-band, the way OpenAI clients expect, then end."""
        await self.resp.write(sse(err.body()))
        await self.resp.write(SSE_DONE)


async def open_stream(
    request: web.Request, run: ChatRun
) -> tuple[GenerationStep | None, StallGuardedResponse]:
    """The first step and the prepared event stream. The first step is pulled before any
    header, so an immediate failure is a plain error; the stream's audit record is committed
    (or a 503 raised) before the first byte."""
    step = await run.next_step()
    await run.audit_started()
    resp = StallGuardedResponse(
        request,
        request.app[SETTINGS].server.stream_stall_timeout_s,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **run.headers,
        },
    )
    await resp.prepare(request)
    return step, resp


async def drive(
    request: web.Request,
    run: ChatRun,
    step: GenerationStep | None,
    emit: Callable[[GenerationStep], Awaitable[None]],
    fail: Callable[[APIError], Awaitable[None]],
) -> bool:
    """Hand every step to ``emit``, then seal the run; a failure goes to ``fail`` as an
    error event. True when the run was sealed and the closing events may follow."""
    try:
        while step is not None:
            await emit(step)
            step = await run.next_step()
        await run.finish()
    except (APIError, DomainError) as exc:
        await fail(exc if isinstance(exc, APIError) else from_domain(exc))
        return False
    except (ConnectionResetError, asyncio.CancelledError):
        raise  # the client left: the run closes itself (what it got still counts)
    except Exception:
        log.exception("internal error in stream", extra={"request_id": request[REQUEST_ID]})
        await fail(APIError(500, "internal server error", code="internal_error"))
        return False
    return True


async def stream(
    request: web.Request, run: ChatRun, render: Render, include_usage: bool
) -> web.StreamResponse:
    """Stream ``run`` (entered already) as server-sent events."""
    step, resp = await open_stream(request, run)
    out = _Events(resp, render, include_usage)
    heads = [h for h in (render.head(i) for i in range(run.prepared.options.n)) if h is not None]
    if heads:
        await resp.write(out.event(heads))
    held: list[bytes] = []

    async def emit(step: GenerationStep) -> None:
        chunks = [render.chunk(d, run.acc[d.index]) for d in step.choices]
        if chunks and step.finished:
            held.append(out.event(chunks))  # the closing chunk waits for the commit
        elif chunks:
            await resp.write(out.event(chunks))

    if await drive(request, run, step, emit, out.fail):
        await out.close(run, held[-1] if held else None)
    return resp
