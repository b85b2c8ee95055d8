"""Honest chats under a login flood (part of `make bench`; never a timed test).

The daemon (tests/support/fake_daemon.py: the real app, store and audit over the
deterministic engine, so what is measured is the daemon, not the model) serves honest
clients that chat one request after another, first alone, then while 100 flooders post
wrong passwords for random names from 10 addresses (127.0.0.10-19). Before the fix Argon2
ran on the event loop inside the write transaction: chat p50 went from 5 ms to seconds and
some honest requests got 503 audit_unavailable. Target: chat p50 under the flood within 2x
of idle, and no 5xx for honest clients.

    python bench/login_flood.py [--seconds 20]

Prints JSON; `make bench` writes it to bench/results/login_flood.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.process import start_fake_daemon  # noqa: E402
from tests.support.store_setup import add_users, init_store  # noqa: E402

CHAT = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}
HONEST, FLOODERS, ADDRESSES = 4, 100, 10


async def honest(base: str, key: str, until: float, out: list[float],
                 statuses: collections.Counter[int]) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
        while time.monotonic() < until:
            t = time.perf_counter()
            async with s.post(base + "/v1/chat/completions", json=CHAT) as resp:
                await resp.read()
                statuses[resp.status] += 1
            out.append((time.perf_counter() - t) * 1000)


async def flooder(base: str, i: int, until: float, statuses: collections.Counter[int]) -> None:
    connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{10 + i % ADDRESSES}", 0))
    async with aiohttp.ClientSession(connector=connector) as s:
        n = 0
        while time.monotonic() < until:
            n += 1
            async with s.post(base + "/auth/login", json={
                    "username": f"guess{i}x{n}", "password": "not-the-password"}) as resp:
                await resp.read()
                statuses[resp.status] += 1


async def phase(base: str, keys: list[str], seconds: float, flood: bool) -> dict[str, Any]:
    until = time.monotonic() + seconds
    latencies: list[float] = []
    honest_status: collections.Counter[int] = collections.Counter()
    flood_status: collections.Counter[int] = collections.Counter()
    tasks = [honest(base, keys[i % len(keys)], until, latencies, honest_status)
             for i in range(HONEST)]
    if flood:
        tasks += [flooder(base, i, until, flood_status) for i in range(FLOODERS)]
    await asyncio.gather(*tasks)
    latencies.sort()
    return {"chat_p50_ms": round(statistics.median(latencies), 1),
            "chat_p95_ms": round(latencies[int(len(latencies) * 0.95) - 1], 1),
            "chats": len(latencies), "chat_status": dict(honest_status),
            "login_status": dict(flood_status)}


async def key_sign_in_ms(base: str, name: str, rounds: int) -> float:
    """Median time of an admin API-key sign-in with a wrong key for ``name``, each from its
    own loopback address (so neither the throttle nor a lock answers instead)."""
    times: list[float] = []
    for i in range(rounds):
        connector = aiohttp.TCPConnector(local_addr=(f"127.0.{1 + i // 200}.{20 + i % 200}", 0))
        async with aiohttp.ClientSession(connector=connector) as s:
            t = time.perf_counter()
            async with s.post(base + "/admin/api/login", json={
                    "username": name, "api_key": "dsk-not-a-key", "totp": "000000"}) as resp:
                await resp.read()
                assert resp.status == 401, resp.status
            times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2)


def run(seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        url = asyncio.run(init_store(data))
        users = asyncio.run(add_users(url, data, [f"honest{i}" for i in range(HONEST)],
                                      daily_request_limit=10_000_000))
        asyncio.run(add_users(url, data, ["root"], role="admin"))
        d = start_fake_daemon(data, Path(tmp) / "daemon.log")
        try:
            idle = asyncio.run(phase(d.url, [u.api_key for u in users], seconds, flood=False))
            flooded = asyncio.run(phase(d.url, [u.api_key for u in users], seconds, flood=True))
            known = asyncio.run(key_sign_in_ms(d.url, "root", 100))
            unknown = asyncio.run(key_sign_in_ms(d.url, "no-such-admin", 100))
        finally:
            d.stop()
    ratio = round(flooded["chat_p50_ms"] / idle["chat_p50_ms"], 2)
    five = sum(n for s, n in flooded["chat_status"].items() if s >= 500)
    return {"idle": idle, "flooded": flooded, "p50_ratio": ratio, "honest_5xx": five,
            "goal": "p50_ratio <= 2 and honest_5xx == 0",
            "met": ratio <= 2 and five == 0,
            "api_key_sign_in_p50_ms": {"known_name": known, "unknown_name": unknown}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--out", help="also write the result here")
    args = p.parse_args()
    result = run(args.seconds)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
