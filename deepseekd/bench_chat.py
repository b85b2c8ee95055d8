"""``deepseekd bench --workload chat``: the load a chat page puts on a server.

``users`` people each hold conversations of several turns. Every request re-sends the whole
conversation so far (as every chat client does), so the server's prefix cache and its
history storage are exercised; between turns the person reads and types (think time).
Prompt lengths, answer lengths and turns per conversation are drawn, with a fixed seed, from
the synthetic table below (README, Benchmarks, "A chat workload"): most messages are short,
a few are long; most answers are a paragraph or two, some a page. Answers are generated to
their drawn length (``ignore_eos``) so two servers produce the same tokens.

Reported: requests and output tokens per second, time to first token and inter-token
latency (per request: the time from the first to the last token over the tokens between) at
p50/p95/p99, and the prefix-cache hit rate (cached prompt tokens over prompt tokens, from
the usage the server reports in ``prompt_tokens_details``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from deepseekd.bench import percentile, ssl_context

# (value, weight): a synthetic distribution shaped like public chat logs' (short questions
# dominate, long pastes are rare; answers mostly one to three paragraphs).
PROMPT_WORDS: tuple[tuple[int, float], ...] = ((8, 0.25), (24, 0.35), (60, 0.25), (150, 0.15))
ANSWER_TOKENS: tuple[tuple[int, float], ...] = ((32, 0.20), (96, 0.35), (192, 0.30), (384, 0.15))
TURNS: tuple[tuple[int, float], ...] = ((1, 0.30), (2, 0.25), (3, 0.20), (5, 0.15), (8, 0.10))
VOCABULARY = [
    "patient",
    "ward",
    "nurse",
    "doctor",
    "shift",
    "handover",
    "discharge",
    "letter",
    "summary",
    "dose",
    "medication",
    "allergy",
    "history",
    "plan",
    "review",
    "follow-up",
    "blood",
    "pressure",
    "temperature",
    "pain",
    "score",
    "bed",
    "theatre",
    "clinic",
    "referral",
    "result",
    "scan",
    "report",
    "please",
    "explain",
    "briefly",
    "why",
    "how",
    "what",
    "when",
    "should",
    "could",
    "would",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "for",
    "with",
    "on",
    "at",
    "by",
    "from",
    "about",
    "this",
    "that",
]
CHARS_PER_TOKEN = 4.0  # to keep a conversation inside the context without a tokenizer


def draw(rng: random.Random, table: tuple[tuple[int, float], ...]) -> int:
    values, weights = zip(*table, strict=True)
    return int(rng.choices(values, weights)[0])


@dataclass
class ChatConfig:
    url: str
    key: str | None = None
    users: int = 4
    duration_s: float = 60.0
    think_s: float = 2.0
    """Mean think time between turns (exponential); 0: none."""
    max_context: int = 2048
    """A conversation ends before its next request would exceed this many tokens."""
    seed: int = 1
    model: str | None = None
    timeout_s: float = 600.0
    cafile: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def __post_init__(self) -> None:
        if self.users < 1 or self.duration_s <= 0 or self.think_s < 0 or self.max_context < 64:
            raise ValueError("--users >= 1, --duration > 0, --think-time >= 0, --max-context >= 64")


@dataclass
class Turn:
    """One request of the workload and what came back."""

    ok: bool
    turn: int
    latency: float
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    ttft: float | None = None
    itl: float | None = None
    answer: str = ""
    error: str = ""


@dataclass
class ChatResult:
    url: str
    users: int
    duration_s: float
    requests_ok: int
    requests_failed: int
    requests_per_s: float
    output_tokens_per_s: float
    turns_per_conversation: float
    ttft_ms: dict[str, float | None]
    itl_ms: dict[str, float | None]
    prompt_tokens: int
    cached_tokens: int
    prefix_cache_hit_rate: float | None
    errors: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Person:
    """One simulated person: conversations one after another, each turn re-sending all."""

    def __init__(self, cfg: ChatConfig, index: int, session: aiohttp.ClientSession) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed * 100_003 + index)
        self.session = session
        self.endpoint = cfg.url.rstrip("/") + "/v1/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if cfg.key:
            self.headers["Authorization"] = f"Bearer {cfg.key}"
        self.conversations = 0

    def words(self, n: int) -> str:
        return " ".join(self.rng.choice(VOCABULARY) for _ in range(n))

    async def run(self, until: float, out: list[Turn]) -> None:
        while time.monotonic() < until:
            self.conversations += 1
            history: list[dict[str, str]] = []
            for turn in range(draw(self.rng, TURNS)):
                question = self.words(draw(self.rng, PROMPT_WORDS))
                max_tokens = draw(self.rng, ANSWER_TOKENS)
                history.append({"role": "user", "content": question})
                if _tokens(history) + max_tokens > self.cfg.max_context:
                    break  # the person starts a new chat, as a full context would make them
                done = await self.ask(history, max_tokens, turn)
                out.append(done)
                if not done.ok or time.monotonic() >= until:
                    break
                history.append({"role": "assistant", "content": done.answer})
                if self.cfg.think_s:
                    await asyncio.sleep(self.rng.expovariate(1 / self.cfg.think_s))

    async def ask(self, messages: list[dict[str, str]], max_tokens: int, turn: int) -> Turn:
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.cfg.model:
            body["model"] = self.cfg.model
        start = time.perf_counter()
        try:
            async with self.session.post(self.endpoint, json=body, headers=self.headers) as r:
                if r.status != 200:
                    await r.read()
                    return Turn(False, turn, time.perf_counter() - start, error=f"HTTP {r.status}")
                return await _read(r, start, turn)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            return Turn(False, turn, time.perf_counter() - start, error=type(exc).__name__)


def _tokens(messages: list[dict[str, str]]) -> int:
    return int(sum(len(m["content"]) + 8 for m in messages) / CHARS_PER_TOKEN)


async def _read(resp: aiohttp.ClientResponse, start: float, turn: int) -> Turn:
    first = last = None
    parts: list[str] = []
    usage: dict[str, Any] = {}
    async for raw in resp.content:
        line = raw.strip()
        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
            continue
        event = json.loads(line[5:])
        if "error" in event:
            code = event["error"].get("code") or "error"
            return Turn(False, turn, time.perf_counter() - start, error=f"stream error: {code}")
        for choice in event.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if text:
                last = time.perf_counter()
                first = first or last
                parts.append(text)
        usage = event.get("usage") or usage
    out = int(usage.get("completion_tokens", len(parts)))
    itl = (last - first) / (out - 1) if first is not None and last is not None and out > 1 else None
    return Turn(
        True,
        turn,
        time.perf_counter() - start,
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        cached_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
        output_tokens=out,
        ttft=None if first is None else first - start,
        itl=itl,
        answer="".join(parts),
    )


async def run_chat(cfg: ChatConfig) -> ChatResult:
    """Run the workload for ``duration_s`` and summarise it."""
    timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
    tls = ssl_context(cfg.url, cfg.cafile, cfg.client_cert, cfg.client_key)
    connector = aiohttp.TCPConnector(limit=cfg.users, ssl=tls)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        people = [Person(cfg, i, session) for i in range(cfg.users)]
        turns: list[Turn] = []
        start = time.monotonic()
        await asyncio.gather(*(p.run(start + cfg.duration_s, turns) for p in people))
        duration = time.monotonic() - start
    return summarize(cfg, turns, duration, sum(p.conversations for p in people))


def _pcts(values: list[float]) -> dict[str, float | None]:
    return {
        f"p{q}": None if (v := percentile(values, q)) is None else round(v * 1000, 1)
        for q in (50, 95, 99)
    }


def summarize(cfg: ChatConfig, turns: list[Turn], duration: float, convs: int) -> ChatResult:
    good = [t for t in turns if t.ok]
    errors: dict[str, int] = {}
    for t in turns:
        if not t.ok:
            errors[t.error] = errors.get(t.error, 0) + 1
    prompt = sum(t.prompt_tokens for t in good)
    cached = sum(t.cached_tokens for t in good)
    return ChatResult(
        url=cfg.url,
        users=cfg.users,
        duration_s=round(duration, 2),
        requests_ok=len(good),
        requests_failed=len(turns) - len(good),
        requests_per_s=round(len(good) / duration, 3) if duration > 0 else 0.0,
        output_tokens_per_s=round(sum(t.output_tokens for t in good) / duration, 1)
        if duration > 0
        else 0.0,
        turns_per_conversation=round(len(turns) / convs, 2) if convs else 0.0,
        ttft_ms=_pcts([t.ttft for t in good if t.ttft is not None]),
        itl_ms=_pcts([t.itl for t in good if t.itl is not None]),
        prompt_tokens=prompt,
        cached_tokens=cached,
        prefix_cache_hit_rate=round(cached / prompt, 3) if prompt else None,
        errors=errors,
    )


def format_chat(r: ChatResult) -> str:
    def ms(d: dict[str, float | None]) -> str:
        return ", ".join(f"{k} {'n/a' if v is None else f'{v:.1f} ms'}" for k, v in d.items())

    hit = "n/a" if r.prefix_cache_hit_rate is None else f"{r.prefix_cache_hit_rate:.1%}"
    lines = [
        f"chat workload   {r.users} people, {r.duration_s:.1f} s, "
        f"{r.turns_per_conversation:.2f} turns per conversation",
        f"requests        {r.requests_ok} ok, {r.requests_failed} failed "
        f"({r.requests_per_s:.2f} requests/s)",
        f"output tokens   {r.output_tokens_per_s:.1f} tokens/s",
        f"first token     {ms(r.ttft_ms)}",
        f"inter-token     {ms(r.itl_ms)}",
        f"prefix cache    {hit} of {r.prompt_tokens} prompt tokens",
    ]
    if r.errors:
        lines.append("errors          " + ", ".join(f"{k} × {v}" for k, v in r.errors.items()))
    return "\n".join(lines)
