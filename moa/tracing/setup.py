"""Export spans from the `moa` command itself: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, `moa run`, `moa batch` and `moa serve` install
the OpenTelemetry SDK with an OTLP/HTTP exporter, configured by the standard `OTEL_*`
variables (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_HEADERS`...), and flush it on exit.

A library user's application configures its own SDK instead; moa only uses the API there.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["ENDPOINT_VARIABLES", "export_from_environment"]

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def export_from_environment() -> Callable[[], None] | None:
    """Install an SDK tracer provider exporting over OTLP/HTTP when an endpoint variable is
    set (and `MOA_TRACING` is not `off`). Returns the function that flushes and shuts it
    down, or None when nothing was installed. Raises `ModuleNotFoundError` when the SDK or
    the exporter is missing."""
    if not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return None
    if os.environ.get("MOA_TRACING", "").strip().lower() == "off":
        return None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create())  # reads OTEL_SERVICE_NAME
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider.shutdown
