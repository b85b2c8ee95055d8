"""Throughput and time to first token against concurrency, raw vLLM and deepseekd side by
side (#20: curves, not points): `make bench` writes bench/results/curves.png from its
summary's rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SERVERS = {"vllm": "vLLM (raw)", "deepseekd": "deepseekd (everything on)"}
COLOURS = {"vllm": "tab:blue", "deepseekd": "tab:orange"}


def _levels(row: dict[str, Any]) -> list[int]:
    return sorted(int(k[1:]) for k in row if k.startswith("c") and k[1:].isdigit())


def plot(rows: dict[str, Any], out: Path) -> str | None:
    """Draw the two panels into ``out`` (PNG); the path written, or None when fewer than
    three concurrency levels were measured for either server."""
    series = {n: rows[n] for n in SERVERS if n in rows and len(_levels(rows[n])) >= 3}
    if len(series) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no screen
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for name, row in series.items():
        xs = _levels(row)
        cells = [row[f"c{c}"] for c in xs]
        left.plot(xs, [c["tokens_per_s"] for c in cells], marker="o", label=SERVERS[name])
        for q, style in (("p50", "-"), ("p95", "--")):
            right.plot(
                xs,
                [c[f"ttft_{q}_ms"] for c in cells],
                style,
                marker="o",
                label=f"{SERVERS[name]} {q}",
            )
    left.set(title="Throughput", xlabel="concurrent clients", ylabel="output tokens/s")
    right.set(title="Time to first token", xlabel="concurrent clients", ylabel="ms")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(_levels(next(iter(series.values()))))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return str(out)
