"""`make bench`'s curves: the plot of throughput and first token against concurrency for
vLLM and deepseekd, and the sweep's table in the README's generated block."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.curves import plot
from bench.side_by_side import curve_markdown


def cell(tps: float, p50: float, p95: float) -> dict[str, Any]:
    return {"tokens_per_s": tps, "ttft_p50_ms": p50, "ttft_p95_ms": p95, "ttft_p99_ms": p95 * 1.3}


def rows(levels: tuple[int, ...]) -> dict[str, Any]:
    return {name: {"label": name, **{f"c{c}": cell(20.0 * c, 60.0 + c, 90.0 + 2 * c)
                                     for c in levels}} for name in ("vllm", "deepseekd")}


def test_the_sweep_is_drawn_and_tabled(tmp_path: Path) -> None:
    out = tmp_path / "curves.png"
    swept = rows((1, 4, 16, 64))
    assert plot(swept, out) == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    md = curve_markdown({"rows": swept, "curves_png": str(out)})
    assert [line.split(" | ")[0] for line in md if line.startswith("| ") and
            line[2].isdigit()] == ["| 1", "| 4", "| 16", "| 64"]
    assert "| 16 | 320.0 | 320.0 | 76 / 122 / 159 | 76 / 122 / 159 |" in md
    assert md[-1].endswith("(bench/results/curves.png)")


def test_two_levels_are_points_not_a_curve(tmp_path: Path) -> None:
    two = rows((1, 16))
    assert plot(two, tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()
    assert curve_markdown({"rows": two}) == []
