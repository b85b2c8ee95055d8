"""`deepseekd bench` against the real daemon and engine: every answer has the asked length."""

from __future__ import annotations

import json

from tests.e2e.conftest import Daemon, cli


def test_bench_streams_fixed_length_answers(daemon: Daemon) -> None:
    res = cli("bench", "--url", daemon.url, "--key", daemon.key, "--concurrency", "2",
              "--requests", "4", "--max-tokens", "12", "--stream", "--json", "-",
              env=daemon.env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["ok"], out["failed"]) == (4, 0)
    assert out["output_tokens"] == 4 * 12  # ignore_eos: the engine ran to max_tokens
    assert 0 < out["ttft_p50_ms"] <= out["latency_p50_ms"]
    assert out["output_tokens_per_s"] > 0


def test_bench_prints_a_readable_report(daemon: Daemon) -> None:
    res = cli("bench", "--url", daemon.url, "--key", daemon.key, "--requests", "2",
              "--max-tokens", "4", "--warmup", "0", env=daemon.env)
    assert res.returncode == 0, res.stderr
    assert "2 ok, 0 failed" in res.stdout
    assert "output tokens   8 " in res.stdout
    assert "2/2" in res.stderr  # the progress bar
