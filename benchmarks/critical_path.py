"""Wall time / critical path of a 3-layer x 4-neuron mixture plus aggregator, 50 ms per call.

The critical path is 4 x 50 ms (three layers and the aggregator, each one call deep). Four
variants run interleaved, run by run, so they see the same machine load:

- `httpx, no moa`: the same call graph hand-written with asyncio.gather and raw httpx
  (the floor any client library can reach);
- `moa + raw-http neuron`: moa's orchestration around that same raw call;
- `litellm, no moa`: the same call graph hand-written with litellm.acompletion;
- `moa + llm neuron`: what users run (litellm inside moa).

moa's own cost is the difference between a moa row and the row without moa below it; the
gap between the httpx and litellm rows is litellm's per-call client cost.

    python benchmarks/critical_path.py [--runs 200] [--latency-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _common import fake_provider_process, machine, pct, settings_for, shape

from moa import MixtureOfAgents, create_moa_from_config
from moa.neurons.llm import load_litellm

LAYERS, WIDTH = 3, 4

Run = Callable[[], Awaitable[None]]


def by_hand(call: Callable[[str], Awaitable[Any]], latency_ms: float) -> Run:
    """The mixture's call graph without moa: each layer gathered, then the aggregator."""

    async def run() -> None:
        for layer in range(LAYERS):
            await asyncio.gather(*(call(f"{latency_ms:g}ms/L{layer}N{j}") for j in range(WIDTH)))
        await call(f"{latency_ms:g}ms/AGG")

    return run


async def main(runs: int, latency_ms: float) -> None:
    with fake_provider_process() as base_url:
        import httpx

        litellm = load_litellm()
        settings = settings_for(base_url)
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=64), timeout=30)
        messages = [{"role": "user", "content": "What is the critical path?"}]

        async def raw(model: str) -> None:
            response = await client.post(
                f"{base_url}/chat/completions", json={"model": model, "messages": messages}
            )
            response.json()

        async def lite(model: str) -> None:
            await litellm.acompletion(
                model=f"openai/{model}",
                messages=messages,
                api_base=base_url,
                api_key="sk-bench-not-a-real-key",
                timeout=30,
                num_retries=0,
                max_retries=0,
            )

        def mixture(kind: str) -> MixtureOfAgents:
            config = shape(LAYERS, WIDTH, kind=kind, latency_ms=latency_ms)
            return create_moa_from_config(config, settings=settings)

        moa_http, moa_llm = mixture("bench-http"), mixture("llm")
        variants: dict[str, Run] = {
            "httpx, no moa": by_hand(raw, latency_ms),
            "moa + raw-http neuron": lambda: _process(moa_http),
            "litellm, no moa": by_hand(lite, latency_ms),
            "moa + llm neuron": lambda: _process(moa_llm),
        }
        walls: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(5):  # warm up: connections, litellm's lazy set-up
            for run in variants.values():
                await run()
        for _ in range(runs):
            for name, run in variants.items():
                start = time.perf_counter()
                await run()
                walls[name].append(time.perf_counter() - start)
        await client.aclose()

    critical = (LAYERS + 1) * latency_ms / 1000
    print(
        f"critical_path: {LAYERS} layers x {WIDTH} neurons + aggregator, {latency_ms:g} ms "
        f"per call, {runs} runs interleaved; {machine()}"
    )
    print(f"critical path {critical * 1000:.0f} ms; wall / critical path:")
    print(f"  {'variant':<24} {'p50':>6} {'p99':>6}   {'p50 ms':>7}")
    for name, values in walls.items():
        p50, p99 = pct(values, 50), pct(values, 99)
        print(f"  {name:<24} {p50 / critical:6.3f} {p99 / critical:6.3f}   {p50 * 1000:7.1f}")
    for moa_row, floor_row in (
        ("moa + raw-http neuron", "httpx, no moa"),
        ("moa + llm neuron", "litellm, no moa"),
    ):
        ratio = pct(walls[moa_row], 50) / pct(walls[floor_row], 50)
        print(f"  {moa_row} / {floor_row}: {ratio:.3f} (p50)")


async def _process(mixture: MixtureOfAgents) -> None:
    await mixture.process("What is the critical path?")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.latency_ms))
