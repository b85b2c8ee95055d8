"""``deepseekd bench``: a closed-loop load generator for any OpenAI-compatible server.

``concurrency`` clients each send one request, wait for the whole answer, and send the next,
until ``requests`` answers are in. Reported: requests ok/failed, output tokens per second over
the run's wall time, time to first token (streaming only; p50/p95/p99) and latency at p50/p95.

It speaks plain OpenAI chat completions, so the same numbers can be taken from deepseekd, the
raw vLLM server or any other server (``make bench`` does that side by side).
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a hospital triage system decides who is seen first.",
    "Describe the water cycle to a ten-year-old, step by step.",
    "List the steps to bake bread at home and explain why each one matters.",
    "Write a letter from a ship's captain to her family about a long voyage.",
    "Explain why the sky is blue and why sunsets are red.",
    "Tell the history of the bicycle in a few paragraphs.",
    "Describe a walk through a busy market in the morning.",
)


@dataclass
class Sample:
    """One request's outcome."""

    ok: bool
    latency: float
    output_tokens: int = 0
    ttft: float | None = None
    error: str = ""


@dataclass
class BenchResult:
    url: str
    concurrency: int
    requests: int
    max_tokens: int
    stream: bool
    ok: int
    failed: int
    duration_s: float
    output_tokens: int
    output_tokens_per_s: float
    requests_per_s: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    short_answers: int = 0
    """Answers that ended before max_tokens (expected 0 with ignore_eos): a server that cut
    answers short would otherwise look fast."""
    errors: dict[str, int] = field(default_factory=dict)
    ttft_p99_ms: float | None = None
    ttfts_ms: list[float] = field(default_factory=list, repr=False)
    """Every first-token time, in completion order (pooled across runs by bench/first_token.py;
    left out of the JSON report)."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["ttfts_ms"]
        return out


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0–100) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(
    samples: list[Sample],
    *,
    url: str,
    concurrency: int,
    max_tokens: int,
    stream: bool,
    duration: float,
) -> BenchResult:
    good = [s for s in samples if s.ok]
    tokens = sum(s.output_tokens for s in good)
    errors: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            errors[s.error] = errors.get(s.error, 0) + 1

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000.0, 2)

    ttfts = [s.ttft for s in good if s.ttft is not None]
    lat = [s.latency for s in good]
    return BenchResult(
        url=url,
        concurrency=concurrency,
        requests=len(samples),
        max_tokens=max_tokens,
        stream=stream,
        ok=len(good),
        failed=len(samples) - len(good),
        duration_s=round(duration, 3),
        output_tokens=tokens,
        output_tokens_per_s=round(tokens / duration, 2) if duration > 0 else 0.0,
        requests_per_s=round(len(good) / duration, 3) if duration > 0 else 0.0,
        ttft_p50_ms=ms(percentile(ttfts, 50)),
        ttft_p95_ms=ms(percentile(ttfts, 95)),
        latency_p50_ms=ms(percentile(lat, 50)),
        latency_p95_ms=ms(percentile(lat, 95)),
        short_answers=sum(s.output_tokens < max_tokens for s in good),
        errors=errors,
        ttft_p99_ms=ms(percentile(ttfts, 99)),
        ttfts_ms=[round(t * 1000.0, 2) for t in ttfts],
    )


@dataclass
class BenchConfig:
    url: str
    key: str | None = None
    concurrency: int = 1
    requests: int = 10
    max_tokens: int = 64
    stream: bool = False
    model: str | None = None
    ignore_eos: bool = True
    warmup: int = 1
    timeout_s: float = 600.0
    progress: bool = True
    cafile: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    """Merged into every request body (e.g. another server's own fixed-length option)."""

    def __post_init__(self) -> None:
        for name in ("concurrency", "requests", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.warmup < 0:
            raise ValueError("--warmup must be 0 or more")


class _Client:
    def __init__(self, cfg: BenchConfig, session: aiohttp.ClientSession) -> None:
        self.cfg = cfg
        self.session = session
        self.endpoint = cfg.url.rstrip("/") + "/v1/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if cfg.key:
            self.headers["Authorization"] = f"Bearer {cfg.key}"

    def body(self, i: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": self.cfg.max_tokens,
            "temperature": 0.0,
            "stream": self.cfg.stream,
        }
        if self.cfg.model:
            body["model"] = self.cfg.model
        if self.cfg.ignore_eos:
            body["ignore_eos"] = True
        if self.cfg.stream:
            body["stream_options"] = {"include_usage": True}
        body.update(self.cfg.extra_body)
        return body

    async def one(self, i: int) -> Sample:
        start = time.perf_counter()
        try:
            async with self.session.post(
                self.endpoint, json=self.body(i), headers=self.headers
            ) as resp:
                if resp.status != 200:
                    await resp.read()
                    return Sample(False, time.perf_counter() - start, error=f"HTTP {resp.status}")
                if not self.cfg.stream:
                    data = await resp.json()
                    tokens = int((data.get("usage") or {}).get("completion_tokens", 0))
                    return Sample(True, time.perf_counter() - start, tokens)
                return await self._read_stream(resp, start)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            return Sample(False, time.perf_counter() - start, error=type(exc).__name__)

    async def _read_stream(self, resp: aiohttp.ClientResponse, start: float) -> Sample:
        ttft: float | None = None
        chunks = 0
        usage_tokens: int | None = None
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            event = json.loads(payload)
            if "error" in event:
                return Sample(
                    False,
                    time.perf_counter() - start,
                    error=f"stream error: {event['error'].get('code') or 'error'}",
                )
            for choice in event.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("reasoning_content"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - start
            if event.get("usage"):
                usage_tokens = int(event["usage"].get("completion_tokens", 0))
        tokens = usage_tokens if usage_tokens is not None else chunks
        return Sample(True, time.perf_counter() - start, tokens, ttft)


def ssl_context(
    url: str, cafile: str | None, client_cert: str | None, client_key: str | None
) -> ssl.SSLContext | bool:
    """The TLS context for an https URL (``--cacert``, ``--client-cert`` for mTLS); True
    (aiohttp's default) for plain http."""
    if not url.startswith("https:"):
        return True
    ctx = ssl.create_default_context(cafile=cafile)
    if client_cert:
        ctx.load_cert_chain(client_cert, client_key)
    return ctx


async def run_bench(cfg: BenchConfig) -> BenchResult:
    """Run the closed loop and return the summary."""
    timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
    connector = aiohttp.TCPConnector(
        limit=cfg.concurrency, ssl=ssl_context(cfg.url, cfg.cafile, cfg.client_cert, cfg.client_key)
    )
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        client = _Client(cfg, session)
        for i in range(cfg.warmup):
            await client.one(i)
        bar = _progress(cfg)
        samples: list[Sample] = []
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < cfg.requests:
                i = next_index
                next_index += 1
                sample = await client.one(i)
                samples.append(sample)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(failed=sum(not s.ok for s in samples), refresh=False)

        start = time.perf_counter()
        try:
            await asyncio.gather(*(worker() for _ in range(min(cfg.concurrency, cfg.requests))))
        finally:
            if bar is not None:
                bar.close()
        duration = time.perf_counter() - start
    return summarize(
        samples,
        url=cfg.url,
        concurrency=cfg.concurrency,
        max_tokens=cfg.max_tokens,
        stream=cfg.stream,
        duration=duration,
    )


def _progress(cfg: BenchConfig) -> Any:
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=cfg.requests,
        unit="req",
        file=sys.stderr,
        dynamic_ncols=True,
        desc=f"c={cfg.concurrency}",
    )


def format_result(r: BenchResult) -> str:
    def f(v: float | None, unit: str = " ms") -> str:
        return "n/a" if v is None else f"{v:.1f}{unit}"

    lines = [
        f"requests        {r.ok} ok, {r.failed} failed ({r.concurrency} concurrent, "
        f"{'streamed' if r.stream else 'not streamed'}, max_tokens {r.max_tokens})",
        f"duration        {r.duration_s:.2f} s",
        f"output tokens   {r.output_tokens} ({r.output_tokens_per_s:.1f} tokens/s, "
        f"{r.requests_per_s:.2f} requests/s)",
        f"first token     p50 {f(r.ttft_p50_ms)}, p95 {f(r.ttft_p95_ms)}, p99 {f(r.ttft_p99_ms)}",
        f"latency         p50 {f(r.latency_p50_ms)}, p95 {f(r.latency_p95_ms)}",
    ]
    if r.short_answers:
        lines.append(f"short answers   {r.short_answers} ended before {r.max_tokens} tokens")
    if r.errors:
        lines.append(
            "errors          " + ", ".join(f"{k} × {v}" for k, v in sorted(r.errors.items()))
        )
    return "\n".join(lines)
