"""`deepseekd bench` (the load generator) against the real app over a FakeEngine."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deepseekd import cli
from deepseekd.bench import BenchConfig, Sample, percentile, run_bench, summarize

from tests.api.conftest import MakeDaemon


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([float(i) for i in range(1, 101)], 95) == pytest.approx(95.05)


def test_summary_counts_failures_apart() -> None:
    samples = [Sample(True, 1.0, 64, 0.1), Sample(True, 3.0, 64, 0.3), Sample(True, 0.2, 1, 0.1),
               Sample(False, 0.01, error="HTTP 429"), Sample(False, 0.02, error="HTTP 429")]
    r = summarize(samples, url="u", concurrency=2, max_tokens=64, stream=True, duration=4.0)
    assert (r.ok, r.failed, r.output_tokens) == (3, 2, 129)
    assert r.short_answers == 1  # an answer cut short is counted, not hidden in the rate
    assert r.output_tokens_per_s == 32.25
    assert r.errors == {"HTTP 429": 2}
    assert r.latency_p50_ms == 1000.0  # failures do not pull the latency down
    assert r.ttft_p50_ms == 100.0


@pytest.mark.parametrize("bad", [{"concurrency": 0}, {"requests": 0}, {"max_tokens": 0},
                                 {"warmup": -1}])
def test_config_rejects_nonsense(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad)).replace("_", "-")):
        BenchConfig(url="http://x", **bad)


@pytest.mark.parametrize("stream", [False, True])
async def test_bench_counts_every_token(make_daemon: MakeDaemon, stream: bool) -> None:
    d = await make_daemon()
    url = str(d.client.make_url("/")).rstrip("/")
    r = await run_bench(BenchConfig(url=url, key=d.key, concurrency=4, requests=10,
                                    max_tokens=7, stream=stream, warmup=0, progress=False))
    assert (r.ok, r.failed) == (10, 0)
    assert r.output_tokens == 70
    assert r.output_tokens_per_s > 0
    assert (r.ttft_p50_ms is not None) == stream
    assert r.latency_p95_ms is not None and r.latency_p95_ms >= r.latency_p50_ms
    # ignore_eos reached the engine for every bench request (not the daemon's own warmup)
    assert [opts.ignore_eos for _, opts, _ in d.engine.requests] == [False] + [True] * 10


async def test_bench_reports_rejections(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    url = str(d.client.make_url("/")).rstrip("/")
    r = await run_bench(BenchConfig(url=url, key="dsk-wrong", concurrency=2, requests=4,
                                    warmup=0, progress=False))
    assert (r.ok, r.failed, r.output_tokens) == (0, 4, 0)
    assert r.errors == {"HTTP 401": 4}


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--url", "http://127.0.0.1:9", "--concurrency", "0"]) == 2
    assert "--concurrency must be at least 1" in capsys.readouterr().err


def test_cli_unreachable_server_fails(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listens on port 9: every request fails, the exit code says so, JSON is valid."""
    rc = cli.main(["bench", "--url", "http://127.0.0.1:9", "--requests", "2", "--warmup", "0",
                   "--quiet", "--json", "-"])
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert (out["ok"], out["failed"]) == (0, 2)
    assert sum(out["errors"].values()) == 2
