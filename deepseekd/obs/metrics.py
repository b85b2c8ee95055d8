"""Prometheus metrics of one daemon, on a registry of its own (no module globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, PlatformCollector, ProcessCollector


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.audit_write_failures = Counter(
            "deepseekd_audit_write_failures_total",
            "Audit events that could not be written (the request failed closed).",
            registry=self.registry,
        )
