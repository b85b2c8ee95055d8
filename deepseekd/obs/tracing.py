"""OpenTelemetry traces, off unless ``[obs] otlp_endpoint`` names a collector.

One span per HTTP request with route, method, status and request id; never content.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("deepseekd.tracing")


class Tracing:
    def __init__(self, endpoint: str, service_name: str = "deepseekd") -> None:
        self._provider: Any = None
        self.tracer: Any = None
        if not endpoint:
            return
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # Our own provider, not the global one: vLLM and libraries keep theirs.
        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self._provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces"))
        )
        self.tracer = self._provider.get_tracer("deepseekd")
        log.info("tracing on", extra={"endpoint": endpoint})

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()  # flushes what is buffered
