"""Sign-in attempts per source address, counted in memory: more than
``auth.login_attempts_per_minute`` from one address get 429 with Retry-After before any
password is checked, so a flood neither burns the CPU on Argon2 nor writes to the database.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

from deepseekd.domain.errors import RateLimited

log = logging.getLogger("deepseekd.auth")

MAX_TRACKED_SOURCES = 100_000


class SourceThrottle:
    """Sign-in attempts per source address in the last minute, in memory (per daemon)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = per_minute
        self._now = clock
        self._seen: dict[str, collections.deque[float]] = {}
        self._warned: dict[str, float] = {}
        self.on_refused: Callable[[], None] = lambda: None

    def over(self, source: str) -> RateLimited | None:
        """The refusal for ``source`` when it is over its attempts (nothing counted)."""
        now = self._now()
        seen = self._seen.get(source)
        if seen is None:
            return None
        while seen and seen[0] <= now - 60:
            seen.popleft()
        if len(seen) < self._limit:
            return None
        wait = max(1, int(seen[0] + 60 - now) + 1)
        self.on_refused()
        if now - self._warned.get(source, float("-inf")) >= 60:  # one line a minute per address
            self._warned[source] = now
            log.warning(
                "sign-in attempts throttled", extra={"source": source, "per_minute": self._limit}
            )
        return RateLimited(
            f"too many sign-in attempts from this address; retry after {wait} s",
            code="too_many_attempts",
            retry_after=wait,
        )

    def check(self, source: str) -> None:
        """Count one attempt from ``source``; RateLimited when it is one too many."""
        refused = self.over(source)
        if refused is not None:
            raise refused
        now = self._now()
        self._seen.setdefault(source, collections.deque()).append(now)
        if len(self._seen) > MAX_TRACKED_SOURCES:  # forget the quietest addresses
            for quiet in [s for s, q in self._seen.items() if not q or q[-1] <= now - 60]:
                del self._seen[quiet]
                self._warned.pop(quiet, None)
