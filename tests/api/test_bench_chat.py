"""`deepseekd bench --workload chat` against the daemon over the test engine: people hold
multi-turn conversations whose requests re-send the growing history (so the prefix cache
hits), answers have their drawn length, and the same seed draws the same workload."""

from __future__ import annotations

import random
from typing import Any

from deepseekd.bench_chat import ANSWER_TOKENS, PROMPT_WORDS, TURNS, ChatConfig, draw, run_chat
from tests.fakes import FakeEngine

MakeDaemon = Any


async def test_the_chat_workload_resends_history_and_hits_the_prefix_cache(
    make_daemon: MakeDaemon,
) -> None:
    engine = FakeEngine(model_name="fake-model", max_model_len=4096)
    d = await make_daemon(engine=engine)
    url = str(d.client.make_url("/")).rstrip("/")
    before = len(engine.requests)
    r = await run_chat(ChatConfig(url=url, key=d.key, users=2, duration_s=3.0, think_s=0.0,
                                  max_context=3000, seed=7))
    assert r.requests_failed == 0 and r.requests_ok >= 4, r
    assert r.turns_per_conversation > 1.0, r
    assert r.prefix_cache_hit_rate is not None and r.prefix_cache_hit_rate > 0.2, r
    assert r.ttft_ms["p50"] is not None and r.itl_ms["p99"] is not None
    sent = engine.requests[before:]
    # Answers were generated to their drawn lengths (ignore_eos), from the table.
    assert {o.max_tokens for _, o, _ in sent} <= {v for v, _ in ANSWER_TOKENS}
    assert all(o.ignore_eos and stream for _, o, stream in sent)
    # A later turn's prompt carries the earlier one (all but the template's last tokens)
    # and more: the history is re-sent.
    prompts = [p for p, _, _ in sent]
    assert any(len(later) > len(p) + 8 and shared(p, later) >= len(p) - 4
               for i, p in enumerate(prompts) for later in prompts[i + 1:])


def shared(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_the_draws_follow_the_table_and_the_seed() -> None:
    a, b = random.Random(5), random.Random(5)
    seq = [(draw(a, PROMPT_WORDS), draw(a, TURNS)) for _ in range(200)]
    assert seq == [(draw(b, PROMPT_WORDS), draw(b, TURNS)) for _ in range(200)]
    words = [w for w, _ in seq]
    assert set(words) <= {v for v, _ in PROMPT_WORDS}
    assert words.count(24) > words.count(150)  # short messages dominate, as weighted
