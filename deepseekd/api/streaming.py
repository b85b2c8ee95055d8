"""A streamed response that gives up on a client that stopped reading.

aiohttp waits for the socket to drain without a limit, so a client that opens a stream and
never reads would hold its engine slot for as long as it keeps the connection open. Each
write here waits at most ``stall_timeout_s``; past that the connection is aborted and the
write raises ConnectionResetError, which the stream handlers treat as a client that left
(tokens charged, generation aborted).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

log = logging.getLogger("deepseekd.http")


class StallGuardedResponse(web.StreamResponse):
    def __init__(self, request: web.Request, stall_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._request = request
        self._stall_timeout_s = stall_timeout_s

    async def _guard(self, write: Any) -> None:
        try:
            async with asyncio.timeout(self._stall_timeout_s):
                await write
        except TimeoutError:
            log.warning("client stopped reading a stream; ending it",
                        extra={"stall_timeout_s": self._stall_timeout_s})
            if self._request.transport is not None:
                self._request.transport.abort()
                # With handler cancellation (the daemon's runner) the lost connection cancels
                # this handler on the next turn of the loop, like any client that left.
                await asyncio.sleep(0)
            raise ConnectionResetError("the client stopped reading the stream") from None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self._guard(super().write(data))

    async def write_eof(self, data: bytes = b"") -> None:
        await self._guard(super().write_eof(data))
