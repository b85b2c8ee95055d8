"""Migrate a database from a separate process, starting on cue, to race another migrator.

    python tests/support/migrate_worker.py URL

Prints "ready" once everything is imported and connected, waits for a line on stdin, then
runs ``Database.upgrade()`` and prints its result as JSON ``[before, head]``.
"""

from __future__ import annotations

import asyncio
import json
import sys

from sqlalchemy import text

from deepseekd.store.db import Database


async def main(url: str) -> None:
    async with Database(url) as db:
        await db.read("ready", lambda s: s.execute(text("SELECT 1")))  # connect before the cue
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        print(json.dumps(list(await db.upgrade())), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
