"""`make bench` (#20): where deepseekd's remaining first-token tail at 1 client and its
throughput gap at 16 clients come from, measured rather than guessed.

The side-by-side table (bench/side_by_side.py) measures 8 requests at 1 client: its p95 is
one request. This probe runs raw vLLM and deepseekd in pairs with enough requests for a real
tail (first-token times pooled over alternating rounds), and reads for every run:

- CPU seconds of each server's API process and of its engine (psutil): what the daemon's own
  work takes from the engine's cores;
- deepseekd's /metrics delta: its database transactions by name (count, mean, slowest
  bucket) and its garbage-collector pauses.

Two pairs: the engine on every core (as `serve` runs on a small CPU box), and the engine on
one core (``DEEPSEEKD_ENGINE__CPU_THREADS=1``, ``VLLM_CPU_OMP_THREADS_BIND=0``), which leaves
the other core to the API process: if the gaps close there, they are the daemon's CPU
competing with the engine's OpenMP threads, a cost a GPU box does not pay.

    python bench/first_token.py [--rounds 2] [--c1 32] [--c16 48] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.side_by_side import Target, build_targets, log, measure  # noqa: E402
from deepseekd.bench import BenchResult, percentile  # noqa: E402

PAIRS = {
    "all cores": ("vllm", "deepseekd"),
    "engine on 1 core": (
        "vllm@VLLM_CPU_OMP_THREADS_BIND=0",
        "deepseekd@DEEPSEEKD_ENGINE__CPU_THREADS=1",
    ),
}


def cpu_seconds(t: Target) -> dict[str, float]:
    """User + system CPU seconds so far: the server's own process and its children."""
    assert t.proc is not None
    root = psutil.Process(t.proc.pid)

    def used(p: psutil.Process) -> float:
        try:
            c = p.cpu_times()
            return float(c.user + c.system)
        except psutil.NoSuchProcess:
            return 0.0

    return {"api": used(root), "engine": sum(used(c) for c in root.children(recursive=True))}


def scrape(t: Target, workdir: Path) -> dict[tuple[str, str], float]:
    """deepseekd's transaction and collector samples, keyed (sample name, label)."""
    if not t.name.startswith("deepseekd"):
        return {}
    key = json.loads((workdir / "bench-metrics.json").read_text())["api_key"]
    req = urllib.request.Request(t.url + "/metrics", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name not in ("deepseekd_db_transaction_seconds", "deepseekd_gc_pause_seconds"):
            continue
        for s in fam.samples:
            label = s.labels.get("name") or s.labels.get("generation", "")
            out[(s.name, f"{label}|{s.labels.get('le', '')}")] = s.value
    return out


def server_side(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[str, Any]:
    """Per transaction name and collector generation: count, mean ms, slowest bucket (ms)."""
    d = {k: v - before.get(k, 0.0) for k, v in after.items()}
    out: dict[str, Any] = {}
    for (name, key), count in d.items():
        if not name.endswith("_count") or count <= 0:
            continue
        label = key.split("|")[0]
        base = name[: -len("_count")]
        total = d.get((base + "_sum", key), 0.0)
        slowest = min(
            (
                float(k.split("|")[1])
                for (n, k), v in d.items()
                if n == base + "_bucket" and k.startswith(label + "|") and v >= count
            ),
            default=float("inf"),
        )
        kind = "db" if "db_transaction" in base else "gc"
        out[f"{kind}:{label}"] = {
            "count": int(count),
            "mean_ms": round(total / count * 1e3, 2),
            "slowest_le_ms": round(slowest * 1e3, 1),
        }
    return out


def run_one(t: Target, c: int, workdir: Path) -> dict[str, Any]:
    m0, cpu0 = scrape(t, workdir), cpu_seconds(t)
    r: BenchResult = measure(t, c)
    m1, cpu1 = scrape(t, workdir), cpu_seconds(t)
    cpu = {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0}
    return {"result": r, "cpu_s": cpu, "server": server_side(m0, m1)}


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ttfts = [x for run in runs for x in run["result"].ttfts_ms]
    tokens = sum(run["result"].output_tokens for run in runs)
    api = sum(run["cpu_s"]["api"] for run in runs)
    engine = sum(run["cpu_s"]["engine"] for run in runs)
    servers: dict[str, Any] = {}
    for run in runs:
        for k, v in run["server"].items():
            s = servers.setdefault(k, {"count": 0, "sum_ms": 0.0, "slowest_le_ms": 0.0})
            s["count"] += v["count"]
            s["sum_ms"] += v["mean_ms"] * v["count"]
            s["slowest_le_ms"] = max(s["slowest_le_ms"], v["slowest_le_ms"])
    return {
        "requests": len(ttfts),
        "tokens_per_s": [run["result"].output_tokens_per_s for run in runs],
        "tokens_per_s_median": round(
            statistics.median(run["result"].output_tokens_per_s for run in runs), 2
        ),
        "ttft_ms": {f"p{q}": round(percentile(ttfts, q) or 0, 1) for q in (50, 90, 95, 99)}
        | {"max": max(ttfts, default=0.0)},
        "api_cpu_ms_per_token": round(api / tokens * 1e3, 3) if tokens else None,
        "engine_cpu_ms_per_token": round(engine / tokens * 1e3, 3) if tokens else None,
        "server": {
            k: {
                "count": v["count"],
                "mean_ms": round(v["sum_ms"] / v["count"], 2),
                "slowest_le_ms": v["slowest_le_ms"],
            }
            for k, v in servers.items()
        },
    }


def run_pair(names: tuple[str, str], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    targets = build_targets(workdir, list(names))
    for t in targets:
        t.requests = {1: args.c1, 16: args.c16}
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        for t in targets:
            t.start(workdir, "warm")
        for rnd in range(args.rounds):
            for t in targets if rnd % 2 == 0 else list(reversed(targets)):
                for c in (1, 16):
                    runs.setdefault((t.name, c), []).append(run_one(t, c, workdir))
    finally:
        for t in targets:
            t.stop()
    return {t.name: {f"c{c}": pooled(runs[(t.name, c)]) for c in (1, 16)} for t in targets}


def to_markdown(res: dict[str, Any]) -> str:
    lines = [
        "| engine threads | server | clients | requests | tok/s (rounds) "
        "| first token p50 / p95 / p99 / max (ms) | API process CPU ms/token "
        "| engine CPU ms/token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pair, servers in res["pairs"].items():
        for name, cells in servers.items():
            for c, cell in cells.items():
                t = cell["ttft_ms"]
                lines.append(
                    f"| {pair} | {name.split('@')[0]} | {c[1:]} | {cell['requests']} "
                    f"| {' / '.join(f'{x:.1f}' for x in cell['tokens_per_s'])} "
                    f"| {t['p50']:.0f} / {t['p95']:.0f} / {t['p99']:.0f} / {t['max']:.0f} "
                    f"| {cell['api_cpu_ms_per_token']} | {cell['engine_cpu_ms_per_token']} |"
                )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--c1", type=int, default=32, help="requests per round at 1 client")
    p.add_argument("--c16", type=int, default=48, help="requests per round at 16 clients")
    p.add_argument("--pairs", default=",".join(PAIRS))
    p.add_argument("--workdir", default=str(ROOT / "bench-data"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "first_token.json"))
    args = p.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "pairs": {}}
    for pair in args.pairs.split(","):
        log(f"pair: {pair}")
        res["pairs"][pair] = run_pair(PAIRS[pair], args, workdir)
        res["markdown"] = to_markdown(res)  # written after every pair: a later failure keeps it
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
