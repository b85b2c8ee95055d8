"""The daemon's own ceiling (part of `make bench`; never a timed test).

How much the daemon itself carries on one core, with the engine taken out of the picture:
tests/support/fake_daemon.py is the real daemon (app, middlewares, API-key auth, the daily
quota, history sealed with AES-256-GCM, the hash-chained audit log, Prometheus metrics, the
access log) over the deterministic test engine with instant tokens. So what is measured is
deepseekd's Python layer, not vLLM and not a model.

The daemon is pinned to one core, this load generator to another. Two loads, each warmed up,
then measured for a fixed window, for a few rounds (medians reported):

* requests/s: short answers (16 tokens), many concurrent clients, every one a new
  conversation: admitted, quota-counted, generated, sealed into the history and audited;
* streamed tokens/s: long streamed answers (512 tokens each), 32 concurrent streams.

With ``--profile`` py-spy (``pip install py-spy``) samples the daemon under each load (the
thread holding the GIL: the Python work on that core; SQLite's own C code and fsync run
without it) and the top frames (own time and inclusive) are written too.

    python bench/daemon_ceiling.py [--seconds 10] [--rounds 3] [--profile]

Prints JSON; `make bench` writes it to bench/results/daemon_ceiling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.process import DaemonProcess, start_fake_daemon  # noqa: E402
from tests.support.store_setup import add_users, init_store  # noqa: E402

USERS = 8  # the per-user concurrency limit is 16: spread the clients over 8 keys
QUESTION = [{"role": "user", "content": "hello there"}]
SHORT_TOKENS, LONG_TOKENS = 16, 512
TARGETS = {"requests_per_s": 300.0, "streamed_tokens_per_s": 20_000.0}


@dataclass
class Tally:
    requests: int = 0
    tokens: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    bad: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Load:
    name: str
    concurrency: int
    stream: bool
    max_tokens: int

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": QUESTION, "max_tokens": self.max_tokens}
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body


LOADS = (
    Load("short_requests", 64, stream=False, max_tokens=SHORT_TOKENS),
    Load("short_streams", 64, stream=True, max_tokens=SHORT_TOKENS),
    Load("long_streams", 32, stream=True, max_tokens=LONG_TOKENS),
)


async def _one(s: aiohttp.ClientSession, url: str, load: Load, t: Tally) -> None:
    """One request; streamed tokens are counted as they arrive (each test-engine token is a
    word ``tokN``), the request when its answer (and ``[DONE]``) is complete."""
    async with s.post(url + "/v1/chat/completions", json=load.body()) as r:
        if r.status != 200:
            t.statuses[r.status] += 1
            t.bad.append(f"{r.status} {(await r.read())[:200]!r}")
            return
        if not load.stream:
            body = await r.json()
            t.tokens += int(body["usage"]["completion_tokens"])
        else:
            carry, tail = b"", b""
            async for chunk in r.content.iter_any():
                buf = carry + chunk
                t.tokens += buf.count(b"tok")  # "tok" cannot overlap itself: none counted twice
                carry, tail = buf[-2:], (tail + chunk)[-64:]
            if not tail.endswith(b"data: [DONE]\n\n"):
                t.bad.append(f"stream without [DONE]: {tail!r}")
                return
        t.statuses[200] += 1
        t.requests += 1


async def _drive(
    url: str, keys: list[str], load: Load, warmup: float, seconds: float
) -> dict[str, float]:
    """Closed-loop clients; the rates over the window after the warm-up."""
    t = Tally()
    stop = asyncio.Event()

    async def client(i: int) -> None:
        headers = {"Authorization": f"Bearer {keys[i % len(keys)]}"}
        async with aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=300)
        ) as s:
            while not stop.is_set():
                await _one(s, url, load, t)

    tasks = [asyncio.create_task(client(i)) for i in range(load.concurrency)]
    await asyncio.sleep(warmup)
    r0, k0, c0 = t.requests, t.tokens, time.perf_counter()
    await asyncio.sleep(seconds)
    r1, k1, c1 = t.requests, t.tokens, time.perf_counter()
    stop.set()
    await asyncio.gather(*tasks)
    if t.bad:
        raise RuntimeError(f"{load.name}: {len(t.bad)} failed, e.g. {t.bad[:3]}")
    return {"requests_per_s": (r1 - r0) / (c1 - c0), "tokens_per_s": (k1 - k0) / (c1 - c0)}


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` (the threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def measure(
    d: DaemonProcess, keys: list[str], load: Load, warmup: float, seconds: float
) -> dict[str, float]:
    """One round of one load; with the daemon's and this process's CPU use over it."""
    me = os.getpid()
    d0, m0, w0 = cpu_seconds(d.proc.pid), cpu_seconds(me), time.perf_counter()
    rates = asyncio.run(_drive(d.url, keys, load, warmup, seconds))
    wall = time.perf_counter() - w0
    rates["daemon_cpu"] = (cpu_seconds(d.proc.pid) - d0) / wall
    rates["loadgen_cpu"] = (cpu_seconds(me) - m0) / wall
    # Work per CPU-second of the daemon: what one core would carry if the daemon had it all
    # (robust when other jobs share the box; the rates above are what it did carry).
    busy = max(rates["daemon_cpu"], 0.01)
    rates["requests_per_cpu_s"] = rates["requests_per_s"] / busy
    rates["tokens_per_cpu_s"] = rates["tokens_per_s"] / busy
    return {k: round(v, 2) for k, v in rates.items()}


def _frame(raw: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``: a function, whatever its line."""
    name, _, where = raw.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(Path(path).parts[-2:])})" if path else name


BOILERPLATE = ("threading.py", "asyncio/runners.py", "asyncio/base_events.py", "fake_daemon.py")
"""Frames under everything a thread does: left out of the inclusive list."""


def _role(frames: list[str]) -> str:
    if any(f.startswith("GroupWriter._run ") for f in frames):
        return "store writer thread"
    if frames[-1].startswith("_worker "):
        return "thread pool"
    return "event loop thread"


def top_frames(raw_file: Path, n: int = 15) -> dict[str, Any]:
    """Own time (the frame on top of the stack) and inclusive time of each function, and
    each thread's part, as shares of the samples, from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    roles: collections.Counter[str] = collections.Counter()
    for line in raw_file.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";") if " (" in f]
        if not frames or not count.isdigit():
            continue
        roles[_role(frames)] += int(count)
        own[frames[-1]] += int(count)
        for f in set(frames):
            if not f.endswith(tuple(b + ")" for b in BOILERPLATE)):
                incl[f] += int(count)
    total = sum(roles.values()) or 1

    def share(c: collections.Counter[str], k: int = n) -> list[list[Any]]:
        return [[f, round(100 * v / total, 1)] for f, v in c.most_common(k)]

    return {
        "samples": total,
        "threads_pct": share(roles),
        "own_pct": share(own),
        "inclusive_pct": share(incl),
    }


def profile(
    d: DaemonProcess,
    keys: list[str],
    load: Load,
    warmup: float,
    seconds: float,
    py_spy: str,
    out: Path,
) -> dict[str, Any]:
    """py-spy on the daemon during one round of ``load`` (sampling starts after the warm-up
    and runs on this process's core, non-blocking, so the daemon is not paused)."""
    raw = out / f"{load.name}.txt"
    argv = [
        py_spy,
        "record",
        "--gil",
        "--nonblocking",
        "--format",
        "raw",
        "--rate",
        "200",
        "--duration",
        str(int(seconds)),
        "--pid",
        str(d.proc.pid),
        "--output",
        str(raw),
    ]
    spy: list[subprocess.Popen[bytes]] = []
    timer = threading.Timer(
        warmup,
        lambda: spy.append(
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ),
    )
    timer.start()
    rates = measure(d, keys, load, warmup, seconds + 1)
    timer.join()
    _, err = spy[0].communicate(timeout=60)
    if spy[0].returncode != 0 or not raw.exists():
        return {"error": err.decode(errors="replace")[-500:], "rates": rates}
    return {"rates": rates, **top_frames(raw)}


def median_rounds(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rounds), 1) for k in rounds[0]}


async def _prepare(data: Path) -> list[str]:
    url = await init_store(data)
    users = await add_users(
        url, data, [f"bench{i}" for i in range(USERS)], daily_request_limit=10_000_000
    )
    return [u.api_key for u in users]


def _cores() -> tuple[set[int], set[int]] | None:
    """One core for the daemon, another for this load generator (None: fewer than 2)."""
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[0]}, {cpus[1]}) if len(cpus) >= 2 else None


def run(
    seconds: float, rounds: int, warmup: float, py_spy: str | None, raw_dir: Path | None
) -> dict[str, Any]:
    cores = _cores()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        keys = asyncio.run(_prepare(data))
        d = start_fake_daemon(
            data,
            Path(tmp) / "daemon.log",
            DEEPSEEKD_TEST_FAKE_TOKEN_DELAY="0",
            DEEPSEEKD_TEST_FAKE_MAX_MODEL_LEN="4096",
        )
        try:
            if cores is not None:
                pin(d.proc.pid, cores[0])
                os.sched_setaffinity(0, cores[1])
            per_load: dict[str, list[dict[str, float]]] = {ld.name: [] for ld in LOADS}
            for _ in range(rounds):
                for ld in LOADS:
                    per_load[ld.name].append(measure(d, keys, ld, warmup, seconds))
            profiles = {}
            if py_spy is not None:
                for ld in LOADS:
                    profiles[ld.name] = profile(
                        d, keys, ld, warmup, seconds, py_spy, raw_dir or Path(tmp)
                    )
            if "Traceback" in d.log():
                raise RuntimeError(f"the daemon logged a traceback:\n{d.log()[-3000:]}")
        finally:
            d.stop()
    return _result(per_load, profiles, cores, seconds, rounds)


def _result(
    per_load: dict[str, list[dict[str, float]]],
    profiles: dict[str, Any],
    cores: tuple[set[int], set[int]] | None,
    seconds: float,
    rounds: int,
) -> dict[str, Any]:
    loads: dict[str, dict[str, Any]] = {
        ld.name: {
            "concurrency": ld.concurrency,
            "stream": ld.stream,
            "max_tokens": ld.max_tokens,
            **median_rounds(per_load[ld.name]),
            "rounds": per_load[ld.name],
        }
        for ld in LOADS
    }
    medians = {ld.name: median_rounds(per_load[ld.name]) for ld in LOADS}
    rps = medians["short_requests"]["requests_per_s"]
    tps = medians["long_streams"]["tokens_per_s"]
    return {
        "what": "the real daemon over the deterministic test engine (instant tokens), not "
        "vLLM; auth, quota, encrypted history, audit, metrics on",
        "daemon_core": sorted(cores[0]) if cores else None,
        "loadgen_core": sorted(cores[1]) if cores else None,
        "seconds": seconds,
        "rounds": rounds,
        "loads": loads,
        "requests_per_s": rps,
        "streamed_tokens_per_s": tps,
        "targets": TARGETS,
        "met": rps >= TARGETS["requests_per_s"] and tps >= TARGETS["streamed_tokens_per_s"],
        "profiles": profiles,
    }


def _py_spy() -> str:
    """py-spy beside this Python (the project's virtual environment), else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy") or "py-spy"


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measured window per round")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="also sample with py-spy")
    p.add_argument("--py-spy", default=_py_spy())
    p.add_argument("--raw-dir", help="keep py-spy's collapsed stacks here")
    p.add_argument("--out", help="also write the result here")
    args = p.parse_args()
    spy = args.py_spy if args.profile and shutil.which(args.py_spy) else None
    if args.profile and spy is None:
        print("py-spy not found: no profile (pip install py-spy)", file=sys.stderr)
    raw_dir = Path(args.raw_dir) if args.raw_dir else None
    if raw_dir is not None:
        raw_dir.mkdir(parents=True, exist_ok=True)
    result = run(args.seconds, args.rounds, args.warmup, spy, raw_dir)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
