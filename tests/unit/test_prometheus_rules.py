"""Monitoring config: the alert rules pass promtool and their unit tests, every alert has a
firing and a silent test case, and the rules, tests and Grafana dashboard only use metric
names the daemon exports (a renamed metric fails here, not silently in production)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "config" / "prometheus"
RULES = PROM / "alert_rules.yml"
RULES_TEST = PROM / "alert_rules_test.yml"
PROM_CONFIG = PROM / "prometheus.yml"
DASHBOARD = REPO / "config" / "grafana" / "deepseekd.json"

# What the daemon exports (deepseekd/obs/metrics.py), plus the scrape's own `up`.
HISTOGRAMS = {
    "http_request_duration_seconds",
    "deepseekd_time_to_first_token_seconds",
    "deepseekd_time_per_output_token_seconds",
    "deepseekd_e2e_request_latency_seconds",
    "deepseekd_gc_pause_seconds",
}
COUNTERS = {
    "deepseekd_prompt_tokens_total",
    "deepseekd_completion_tokens_total",
    "deepseekd_reasoning_tokens_total",
    "deepseekd_auth_failures_total",
    "deepseekd_lockouts_total",
    "deepseekd_identity_source_errors_total",
    "deepseekd_quota_rejections_total",
    "deepseekd_overload_rejections_total",
    "deepseekd_audit_write_failures_total",
    "deepseekd_siem_sent_total",
    "deepseekd_siem_errors_total",
    "deepseekd_notify_errors_total",
}
GAUGES = {
    "deepseekd_requests_running",
    "deepseekd_requests_waiting",
    "deepseekd_kv_cache_usage_ratio",
    "deepseekd_engine_up",
    "deepseekd_ready",
    "deepseekd_tls_certificate_expiry_timestamp_seconds",
    "deepseekd_build_info",
    "deepseekd_siem_lag_events",
    "deepseekd_breakglass_active",
    "deepseekd_breakglass_unreviewed_overdue",
    "deepseekd_gpu_memory_used_bytes",
    "deepseekd_gpu_memory_total_bytes",
    "deepseekd_gpu_utilization_ratio",
    "deepseekd_gpu_temperature_celsius",
    "deepseekd_gpu_power_watts",
    "deepseekd_gc_frozen_objects",
    "deepseekd_finetune",
}
SERIES = (
    {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
    | COUNTERS | GAUGES | {"up"}
)
SEVERITIES = {"critical", "warning", "info"}

# The original design's latency alert, kept in its form.
HIGH_LATENCY = 'avg(rate(http_request_duration_seconds_sum{service="deepseek"}[1m])) > 0.5'
# The engine reserves engine.gpu_memory_utilization of each GPU (0.90 in the GPU profiles) and
# keeps it, so GPU memory is watched as bytes left free (under 512 MiB), never as a share used.
GPU_MEMORY_EXHAUSTED = (
    "deepseekd_gpu_memory_total_bytes - deepseekd_gpu_memory_used_bytes < 536870912"
)


# --------------------------------------------------------------------------- helpers


def promtool() -> str:
    """promtool's path; a missing promtool fails the test (never skips it)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found on PATH: run `.ci/system-deps` as root (it installs "
                    "Debian's `prometheus` package, which brings /usr/bin/promtool)")
    return path


def run(*args: str | Path) -> None:
    proc = subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, (
        f"promtool {' '.join(map(str, args))} exited {proc.returncode}:\n"
        f"{proc.stdout}\n{proc.stderr}")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]
            if "alert" in rule]


def seconds(duration: str | None) -> float:
    """A Prometheus duration ("1m", "1h30m", "15s") in seconds; None or "0" is 0."""
    if not duration or duration == "0":
        return 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "bool", "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (label names, functions and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)           # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)          # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = re.findall(r"(?<![\w.:])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text)
    return {n for n in names if n.lower() not in _KEYWORDS}


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every query target of every panel."""
    out = []
    for panel in dashboard_panels(dash["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((f"panel {panel['id']} {panel.get('title')!r} {target['refId']}",
                            target["expr"]))
    return out


def dashboard_variable_metrics(dash: dict[str, Any]) -> set[str]:
    names = set()
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
        names |= metric_names(m.group(1) if m else query)
    return names


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, for promtool."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    expr = expr.replace("$__range", "6h")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


# --------------------------------------------------------------------------- promtool


def test_rules_pass_promtool_check() -> None:
    run("check", "rules", RULES)


def test_rules_unit_tests_pass() -> None:
    run("test", "rules", RULES_TEST)


def test_example_prometheus_config_is_valid() -> None:
    run("check", "config", "--syntax-only", PROM_CONFIG)
    config = load_yaml(PROM_CONFIG)
    assert "alert_rules.yml" in config["rule_files"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "deepseekd"]
    assert job["scheme"] == "https"
    assert job["tls_config"]["ca_file"]
    assert not job["tls_config"].get("insecure_skip_verify")
    assert job["authorization"]["credentials_file"]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (as a recording rule)."""
    dash = json.loads(DASHBOARD.read_text())
    rules = [{"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
             for i, (_, expr) in enumerate(dashboard_exprs(dash))]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run("check", "rules", path)


# --------------------------------------------------------------------------- rules


def test_rules_have_severity_and_instructions() -> None:
    groups = load_yaml(RULES)["groups"]
    assert [g["name"] for g in groups] == ["deepseekd"]
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    for rule in rules:
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), f"{rule['alert']}: no summary"
        assert len(annotations.get("description", "")) > 80, (
            f"{rule['alert']}: the description must tell IT what to do")


def test_high_latency_keeps_the_original_form() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "HighLatency"]
    assert rule["expr"].strip() == HIGH_LATENCY
    assert seconds(rule["for"]) == 60
    assert rule["labels"]["severity"] == "critical"


def test_gpu_memory_alert_watches_free_bytes_not_the_share_in_use() -> None:
    """A used/total ratio alert (the former GPUMemoryHigh, > 90%) fired on every GPU box at
    rest: the engine's 0.90 share plus its CUDA context is over 90% by design."""
    rules = alert_rules()
    gpu_memory = {"deepseekd_gpu_memory_used_bytes", "deepseekd_gpu_memory_total_bytes"}
    ratios = [r["alert"] for r in rules
              if gpu_memory & metric_names(r["expr"]) and "/" in r["expr"]]
    assert not ratios, f"alerts on the share of GPU memory in use: {ratios}"
    (rule,) = [r for r in rules if r["alert"] == "GPUMemoryExhausted"]
    assert rule["expr"].strip() == GPU_MEMORY_EXHAUSTED
    assert seconds(rule["for"]) == 300
    assert rule["labels"]["severity"] == "warning"


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    """A firing case, and a test group where the alert never fires, evaluated once the rule's
    `for` has passed (a pending alert in a firing group does not count as silent)."""
    tests = load_yaml(RULES_TEST)
    assert tests["rule_files"] == ["alert_rules.yml"]
    groups = [group.get("alert_rule_test", []) for group in tests["tests"]]
    problems = []
    for rule in alert_rules():
        name, hold = rule["alert"], seconds(rule.get("for"))
        firing = [c for cases in groups for c in cases
                  if c["alertname"] == name and c.get("exp_alerts")]
        silent = [c for cases in groups
                  if not any(c["alertname"] == name and c.get("exp_alerts") for c in cases)
                  for c in cases if c["alertname"] == name and seconds(c["eval_time"]) >= hold]
        if not firing:
            problems.append(f"{name}: no case where it fires")
        if not silent:
            problems.append(f"{name}: no test group where it stays silent with eval_time >= "
                            f"its for ({rule.get('for', 0)})")
        for case in firing:
            if seconds(case["eval_time"]) < hold:
                problems.append(f"{name} fires at {case['eval_time']}, before its for")
            for alert in case["exp_alerts"]:
                if alert.get("exp_labels", {}).get("severity") != rule["labels"]["severity"]:
                    problems.append(f"{name} at {case['eval_time']}: severity label differs")
                if set(alert.get("exp_annotations", {})) != set(rule["annotations"]):
                    problems.append(f"{name} at {case['eval_time']}: annotations not all checked")
    known = {r["alert"] for r in alert_rules()}
    problems += [f"test case for unknown alert {c['alertname']}" for cases in groups
                 for c in cases if c["alertname"] not in known]
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- metric names


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, route) (rate(foo_bucket{le="+Inf", '
            'a=~"b|c"}[5m:1m]))) > 2 and on(instance) bar offset 5m or baz_total * 60 '
            '- time() unless ignoring(gpu) group_left(x) qux > bool 1e3')
    assert metric_names(expr) == {"foo_bucket", "bar", "baz_total", "qux"}


def test_rules_use_only_exported_metrics() -> None:
    unknown = {f"{r['alert']}: {n}" for r in alert_rules()
               for n in metric_names(r["expr"]) - SERIES}
    assert not unknown, f"metrics the daemon does not export: {sorted(unknown)}"


def test_rule_tests_feed_only_exported_metrics() -> None:
    tests = load_yaml(RULES_TEST)
    names = {s["series"].split("{")[0].strip() for group in tests["tests"]
             for s in group.get("input_series", [])}
    assert not names - SERIES, f"metrics the daemon does not export: {sorted(names - SERIES)}"


def test_dashboard_parses_and_uses_only_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    assert any(i["name"] == "DS_PROMETHEUS" for i in dash["__inputs"])
    unknown = {f"{where}: {n}" for where, expr in dashboard_exprs(dash)
               for n in metric_names(expr) - SERIES}
    unknown |= {f"templating: {n}" for n in dashboard_variable_metrics(dash) - SERIES}
    assert not unknown, f"metrics the daemon does not export: {sorted(unknown)}"
    ids = [p["id"] for p in dashboard_panels(dash["panels"])]
    assert len(ids) == len(set(ids)), "duplicate panel ids"


def test_dashboard_shows_every_exported_metric() -> None:
    dash = json.loads(DASHBOARD.read_text())
    used = {n for _, expr in dashboard_exprs(dash) for n in metric_names(expr)}
    missing = {m for m in COUNTERS | GAUGES if m not in used}
    missing |= {h for h in HISTOGRAMS if not {f"{h}_bucket", f"{h}_sum", f"{h}_count"} & used}
    assert not missing, f"no dashboard panel shows {sorted(missing)}"


def test_dashboard_queries_use_the_datasource_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    for panel in dashboard_panels(dash["panels"]):
        for obj in [panel, *panel.get("targets", [])]:
            if panel["type"] != "row":
                assert obj.get("datasource", {}).get("uid") == "${DS_PROMETHEUS}", panel["title"]
