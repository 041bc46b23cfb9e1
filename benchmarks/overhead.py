"""Per-request orchestration overhead of moa: what `process()` costs beyond its calls.

Overhead = wall time of `process()` minus the time spent inside neuron calls on the critical
path (for each layer its slowest call, plus the aggregator's call), with 0 ms upstream.
Three neuron types, interleaved run by run:

- `null neuron`: answers without I/O, so the whole wall time is moa's;
- `raw-http neuron`: one httpx POST to the loopback fake provider;
- `llm neuron`: litellm, as users run it.

Two shapes: 3 proposers + aggregator (the shape peers were measured with) and
3 layers x 4 neurons + aggregator.

    python benchmarks/overhead.py [--runs 300]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import fake_provider_process, machine, pct, settings_for, shape

from moa import MixtureOfAgents, MoAResult, create_moa_from_config

SHAPES = {"1 x 3 + agg": (1, 3), "3 x 4 + agg": (3, 4)}
KINDS = {"null neuron": "bench-null", "raw-http neuron": "bench-http", "llm neuron": "llm"}


def overhead(result: MoAResult, wall: float) -> float:
    inside = sum(max(n.seconds for n in layer.neurons) for layer in result.layers)
    return wall - inside - result.aggregator.seconds


async def main(runs: int) -> None:
    with fake_provider_process() as base_url:
        settings = settings_for(base_url)
        mixtures: dict[tuple[str, str], MixtureOfAgents] = {
            (shape_name, kind_name): create_moa_from_config(
                shape(layers, width, kind=kind, latency_ms=0), settings=settings
            )
            for shape_name, (layers, width) in SHAPES.items()
            for kind_name, kind in KINDS.items()
        }
        walls: dict[tuple[str, str], list[float]] = {key: [] for key in mixtures}
        costs: dict[tuple[str, str], list[float]] = {key: [] for key in mixtures}
        for _ in range(5):
            for mixture in mixtures.values():
                await mixture.process("overhead?")
        for _ in range(runs):
            for key, mixture in mixtures.items():
                start = time.perf_counter()
                result = await mixture.process("overhead?")
                wall = time.perf_counter() - start
                walls[key].append(wall)
                costs[key].append(overhead(result, wall))

    print(
        f"overhead: moa's own time per process() at 0 ms upstream, {runs} runs interleaved; "
        f"{machine()}"
    )
    print(f"  {'shape':<12} {'neuron':<16} {'overhead p50':>12} {'p99':>8}   {'wall p50':>8}")
    for (shape_name, kind_name), values in costs.items():
        wall = pct(walls[(shape_name, kind_name)], 50)
        print(
            f"  {shape_name:<12} {kind_name:<16} {pct(values, 50) * 1000:9.3f} ms "
            f"{pct(values, 99) * 1000:6.3f} ms   {wall * 1000:6.2f} ms"
        )
    print("  goal: overhead p50 <= 1 ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    asyncio.run(main(parser.parse_args().runs))
