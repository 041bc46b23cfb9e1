"""What OpenTelemetry tracing costs per call: the same mixtures with tracing off and on, run
interleaved in one process.

Null neurons (no I/O) in 3 layers x 4 + aggregator (13 calls, 5 spans of run and layers
besides), so the wall time of `process()` is moa's own and the difference between rows is
what tracing adds. "on" records every span with the OpenTelemetry SDK, as `moa run` does
when OTEL_EXPORTER_OTLP_ENDPOINT is set (a BatchSpanProcessor), but hands the batches to an
exporter that drops them: the network side of an export runs in the SDK's own thread and is
not moa's cost. "on + content" also records prompts and answers (MOA_TRACE_CONTENT=true).

    python benchmarks/tracing.py [--runs 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

from _common import machine, pct, shape
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from moa import MixtureOfAgents, Settings, create_moa_from_config

LAYERS, WIDTH = 3, 4
CALLS = LAYERS * WIDTH + 1


class Dropped(SpanExporter):
    """Counts the spans it is given and keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


async def main(runs: int) -> None:
    exporter = Dropped()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    config = shape(LAYERS, WIDTH, kind="bench-null", latency_ms=0)
    variants: dict[str, MixtureOfAgents] = {
        "off": create_moa_from_config(config, settings=Settings(tracing="off")),
        "on": create_moa_from_config(config, settings=Settings(tracing="on")),
        "on + content": create_moa_from_config(
            config, settings=Settings(tracing="on", trace_content=True)
        ),
    }
    walls: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(50):
        for mixture in variants.values():
            await mixture.process("tracing?")
    for _ in range(runs):
        for name, mixture in variants.items():
            start = time.perf_counter()
            await mixture.process("tracing?")
            walls[name].append(time.perf_counter() - start)
    provider.shutdown()

    off = pct(walls["off"], 50)
    print(
        f"tracing: process() of {LAYERS} x {WIDTH} + aggregator with null neurons "
        f"({CALLS} calls), {runs} runs interleaved; {machine()}"
    )
    print(f"  {'tracing':<14} {'p50':>9} {'p90':>9}   {'per call vs off (p50)':>22}")
    for name, values in walls.items():
        p50 = pct(values, 50)
        extra = (p50 - off) / CALLS * 1e6
        print(
            f"  {name:<14} {p50 * 1000:6.3f} ms {pct(values, 90) * 1000:6.3f} ms   "
            f"{'' if name == 'off' else f'+{extra:.1f} us':>22}"
        )
    print(f"  spans exported: {exporter.spans} (expected {(runs + 50) * 2 * (CALLS + LAYERS + 2)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    asyncio.run(main(parser.parse_args().runs))
