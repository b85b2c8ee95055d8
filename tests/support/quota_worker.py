"""Consume one user's quota concurrently from a separate process; print how many were allowed.

    python tests/support/quota_worker.py URL USER_ID LIMIT NOW COUNT

NOW is the (fixed) clock, so every worker counts against the same quota day.
"""

from __future__ import annotations

import asyncio
import sys

from deepseekd.config import QuotaSettings
from deepseekd.domain.identity import Identity
from deepseekd.store.db import Database
from deepseekd.services.usage import QuotaService


async def main(url: str, user_id: int, limit: int, now: float, count: int) -> int:
    async with Database(url, pool_size=20) as db:
        quota = QuotaService(db, QuotaSettings(), lambda: now)
        who = Identity(user_id, "racer", "user", "api_key", None, limit, None)
        states = await asyncio.gather(*(quota.consume(who) for _ in range(count)))
    return sum(s.allowed for s in states)


if __name__ == "__main__":
    url, user_id, limit, now, count = sys.argv[1:6]
    print(asyncio.run(main(url, int(user_id), int(limit), float(now), int(count))), flush=True)
