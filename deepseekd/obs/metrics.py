"""Prometheus metrics of one daemon, on a registry of its own (no module globals).

Names are a contract with config/prometheus/alert_rules.yml and config/grafana/: a test
checks that every name used there exists here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from deepseekd.obs.siem import SINKS as SIEM_SINKS

log = logging.getLogger("deepseekd.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)


class Metrics:
    def __init__(self) -> None:  # long: one declaration per metric, nothing else
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # The original design's alert reads http_request_duration_seconds{service="deepseek"}.
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency (to the last byte).",
            ["service", "route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "deepseekd_time_to_first_token_seconds",
            "Request arrival to first generated token.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "deepseekd_time_per_output_token_seconds",
            "Mean time between output tokens of a request.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "deepseekd_e2e_request_latency_seconds",
            "Request arrival to the last token, for inference requests.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "deepseekd_prompt_tokens", "Prompt tokens processed.", registry=r
        )
        self.completion_tokens = Counter(
            "deepseekd_completion_tokens", "Output tokens generated.", registry=r
        )
        self.reasoning_tokens = Counter(
            "deepseekd_reasoning_tokens", "Output tokens that were reasoning.", registry=r
        )
        self.prompt_cached_tokens = Counter(
            "deepseekd_prompt_cached_tokens",
            "Prompt tokens found in the prefix cache (the same user's earlier prompts).",
            registry=r,
        )
        self.requests_running = Gauge(
            "deepseekd_requests_running", "Requests the engine is generating for.", registry=r
        )
        self.requests_waiting = Gauge(
            "deepseekd_requests_waiting", "Requests queued in the engine.", registry=r
        )
        self.kv_cache_usage = Gauge(
            "deepseekd_kv_cache_usage_ratio", "Share of the KV cache in use (0-1).", registry=r
        )
        self.engine_up = Gauge(
            "deepseekd_engine_up", "1 while the engine is loaded and alive.", registry=r
        )
        self.ready = Gauge("deepseekd_ready", "1 while the daemon takes requests.", registry=r)
        self.auth_failures = Counter(
            "deepseekd_auth_failures", "Refused credentials, logins and second factors.", registry=r
        )
        self.lockouts = Counter("deepseekd_lockouts", "Accounts locked after failures.", registry=r)
        self.identity_source_errors = Counter(
            "deepseekd_identity_source_errors",
            "Sign-ins (and directory rechecks) that could not ask the directory or the OpenID "
            "provider: down, TLS, timeout. source = ldap or oidc.",
            ["source"],
            registry=r,
        )
        for source in ("ldap", "oidc"):  # exported at 0 from the start, for rate() and alerts
            self.identity_source_errors.labels(source)
        self.breakglass_active = Gauge(
            "deepseekd_breakglass_active",
            "Break-glass (emergency access) sessions active now.",
            registry=r,
        )
        self.breakglass_unreviewed = Gauge(
            "deepseekd_breakglass_unreviewed_overdue",
            "Ended break-glass sessions no auditor reviewed within [breakglass] review_hours.",
            registry=r,
        )
        self.notify_errors = Counter(
            "deepseekd_notify_errors",
            "Break-glass notices that could not be delivered. channel = webhook or syslog.",
            ["channel"],
            registry=r,
        )
        for channel in ("webhook", "syslog"):
            self.notify_errors.labels(channel)
        self.sign_ins_throttled = Counter(
            "deepseekd_sign_ins_throttled",
            "Sign-in attempts refused because their address made too many.",
            registry=r,
        )
        self.quota_rejections = Counter(
            "deepseekd_quota_rejections", "Requests refused by a daily quota.", registry=r
        )
        self.overload_rejections = Counter(
            "deepseekd_overload_rejections",
            "Inference requests refused with 503 because server.max_queued_requests were "
            "already admitted.",
            registry=r,
        )
        self.audit_write_failures = Counter(
            "deepseekd_audit_write_failures",
            "Audit events that could not be written (the request failed closed).",
            registry=r,
        )
        self.siem_lag = Gauge(
            "deepseekd_siem_lag_events",
            "Audit events not yet acknowledged by the SIEM sink (the chain's head id minus "
            "the sink's cursor). sink = syslog, jsonl or http.",
            ["sink"],
            registry=r,
        )
        self.siem_sent = Counter(
            "deepseekd_siem_sent",
            "Audit events the SIEM sink acknowledged (a batch re-sent after a failure counts "
            "again).",
            ["sink"],
            registry=r,
        )
        self.siem_errors = Counter(
            "deepseekd_siem_errors",
            "Batches the SIEM sink did not acknowledge (down, refused, TLS, timeout).",
            ["sink"],
            registry=r,
        )
        for sink in SIEM_SINKS:  # exported at 0 from the start, for rate() and alerts
            self.siem_lag.labels(sink)
            self.siem_sent.labels(sink)
            self.siem_errors.labels(sink)
        self.db_transaction = Histogram(
            "deepseekd_db_transaction_seconds",
            "Database transactions by name, from the call to the commit (queueing included).",
            ["name"],
            buckets=DB_BUCKETS,
            registry=r,
        )
        self.gc_pause = Histogram(
            "deepseekd_gc_pause_seconds",
            "Garbage-collector pauses of the daemon's process (the event loop stops meanwhile), "
            "by generation (2 = a full collection).",
            ["generation"],
            buckets=GC_BUCKETS,
            registry=r,
        )
        self.gc_frozen_objects = Gauge(
            "deepseekd_gc_frozen_objects",
            "Objects of the start-up heap moved out of the collector's reach once ready.",
            registry=r,
        )
        self.tls_expiry = Gauge(
            "deepseekd_tls_certificate_expiry_timestamp_seconds",
            "When the served TLS certificate expires (unix time).",
            registry=r,
        )
        self.finetune = Gauge(
            "deepseekd_finetune",
            "The newest fine-tuning job: running (1/0), progress (0-1), loss (training), "
            "eta_seconds; timer_failed: 1 when the newest job deepseekd-finetune.timer started "
            "failed or died. Refreshed once a minute.",
            ["field"],
            registry=r,
        )
        self.build_info = Gauge(
            "deepseekd_build_info",
            "Version and model being served.",
            ["version", "model", "model_sha256"],
            registry=r,
        )
        self.gpu = GpuCollector()
        r.register(self.gpu)
        self._rate_mark = (time.monotonic(), 0.0)

    def token_rate(self) -> float:
        """Output tokens per second since the previous call (the console polls this)."""
        now, total = time.monotonic(), self.completion_tokens._value.get()
        last_t, last_total = self._rate_mark
        self._rate_mark = (now, total)
        return (total - last_total) / (now - last_t) if now > last_t else 0.0

    def observe_transaction(self, name: str, seconds: float) -> None:
        self.db_transaction.labels(name).observe(seconds)

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_duration.labels("deepseek", route, method, str(status)).observe(seconds)

    def observe_generation(
        self,
        *,
        arrival: float,
        first_token: float | None,
        last_token: float,
        prompt_tokens: int,
        completion_tokens: int,
        reasoning_tokens: int = 0,
        cached_tokens: int = 0,
    ) -> None:
        """One finished (or abandoned) inference request; times are time.monotonic().
        ``reasoning_tokens`` are part of ``completion_tokens`` and counted apart as well;
        ``cached_tokens`` are part of ``prompt_tokens``."""
        self.prompt_tokens.inc(prompt_tokens)
        self.prompt_cached_tokens.inc(cached_tokens)
        self.completion_tokens.inc(completion_tokens)
        self.reasoning_tokens.inc(reasoning_tokens)
        if first_token is None:
            return
        self.ttft.observe(first_token - arrival)
        self.e2e.observe(last_token - arrival)
        if completion_tokens > 1:
            self.tpot.observe((last_token - first_token) / (completion_tokens - 1))


class GpuCollector(Collector):
    """Per-GPU memory, utilisation, temperature and power through NVML. On a box without a
    GPU (or without the driver) it yields nothing, so the metrics are simply absent.
    ``nvml`` replaces ``pynvml`` in tests."""

    def __init__(self, nvml: Any = None) -> None:
        self._nvml: Any = None
        self._count = 0
        started = False
        try:
            if nvml is None:
                import pynvml

                nvml = pynvml
            nvml.nvmlInit()
            started = True
            # Count first: only a collector that knows its GPUs is switched on, so a driver
            # that fails here leaves the metrics absent instead of breaking every scrape.
            self._count = int(nvml.nvmlDeviceGetCount())
            self._nvml = nvml
            log.info("NVML found", extra={"gpus": self._count})
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver errors
            log.info("no GPU metrics", extra={"reason": type(exc).__name__})
            if started:
                try:
                    nvml.nvmlShutdown()
                except Exception:
                    pass

    def snapshot(self) -> list[dict[str, float]]:
        """Memory per GPU for the admin console; [] without a GPU."""
        fams = {f.name: f for f in self.collect()}
        if not fams:
            return []
        used = {s.labels["gpu"]: s.value for s in fams["deepseekd_gpu_memory_used_bytes"].samples}
        total = {s.labels["gpu"]: s.value for s in fams["deepseekd_gpu_memory_total_bytes"].samples}
        return [
            {"index": int(i), "memory_used_bytes": used[i], "memory_total_bytes": total[i]}
            for i in sorted(used, key=int)
        ]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        nv = self._nvml
        if nv is None:
            return []
        used = GaugeMetricFamily(
            "deepseekd_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu"]
        )
        total = GaugeMetricFamily("deepseekd_gpu_memory_total_bytes", "GPU memory.", labels=["gpu"])
        util = GaugeMetricFamily(
            "deepseekd_gpu_utilization_ratio",
            "Share of time the GPU was busy (0-1).",
            labels=["gpu"],
        )
        temp = GaugeMetricFamily(
            "deepseekd_gpu_temperature_celsius", "GPU temperature.", labels=["gpu"]
        )
        power = GaugeMetricFamily("deepseekd_gpu_power_watts", "GPU power draw.", labels=["gpu"])
        for i in range(self._count):
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                used.add_metric([str(i)], float(mem.used))
                total.add_metric([str(i)], float(mem.total))
                util.add_metric([str(i)], nv.nvmlDeviceGetUtilizationRates(h).gpu / 100.0)
                temp.add_metric([str(i)], float(_temperature(nv, h)))
                power.add_metric([str(i)], nv.nvmlDeviceGetPowerUsage(h) / 1000.0)
            except Exception as exc:  # one bad GPU must not break the scrape
                log.warning("NVML read failed", extra={"gpu": i, "error": type(exc).__name__})
        return [used, total, util, temp, power]


def _temperature(nv: Any, handle: Any) -> int:
    """nvmlDeviceGetTemperature is deprecated (removed with CUDA 14); drivers older than the
    V call (or bindings without it) still answer the old one."""
    getter = getattr(nv, "nvmlDeviceGetTemperatureV", None)
    if getter is not None:
        try:
            return int(getter(handle, nv.NVML_TEMPERATURE_GPU))
        except nv.NVMLError_FunctionNotFound:
            pass
    return int(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))


def bind_gauges(
    metrics: Metrics,
    engine_up: Callable[[], float],
    ready: Callable[[], float],
    running: Callable[[], float],
    waiting: Callable[[], float],
    kv_usage: Callable[[], float],
) -> None:
    """Gauges read live state at scrape time instead of being pushed on every change."""
    metrics.engine_up.set_function(engine_up)
    metrics.ready.set_function(ready)
    metrics.requests_running.set_function(running)
    metrics.requests_waiting.set_function(waiting)
    metrics.kv_cache_usage.set_function(kv_usage)
