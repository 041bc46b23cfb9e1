"""Fan-out cost, measured side by side in one run against the loopback fake provider.

    python benchmarks/fanout.py [--calls 300] [--rss-calls 20000]

The fake provider runs in a child process (`_common.fake_provider_process`; a model named
`50ms/...` answers after 50 ms, `0ms/...` at once), so `time.process_time()` here is the
client's CPU alone. Printed as ratios to the raw-httpx floor and to the ideal wall time, since
absolute numbers depend on the (shared, 2-core) machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _common import fake_provider_process, pct, settings_for, shape

from moa import MixtureOfAgents

MESSAGES = [{"role": "user", "content": "How far is the moon?"}]
KEY = "sk-bench-not-a-real-key"  # what settings_for() sends


async def per_call(fn: Callable[[], Awaitable[Any]], calls: int) -> tuple[float, float]:
    """(median wall ms, mean CPU ms) of sequential calls."""
    for _ in range(30):
        await fn()
    walls = []
    cpu0 = time.process_time()
    for _ in range(calls):
        t0 = time.perf_counter()
        await fn()
        walls.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / calls
    return statistics.median(walls) * 1000, cpu * 1000


def mixture(base: str, layers: int, width: int, latency_ms: float) -> MixtureOfAgents:
    config = shape(layers, width, kind="llm", latency_ms=latency_ms)
    return MixtureOfAgents.from_config(config, settings=settings_for(base))


async def main(args: argparse.Namespace) -> None:
    import httpx
    import openai

    from moa.neurons.base import NeuronRequest
    from moa.neurons.llm import LLMConfig, LLMNeuron, load_litellm

    with fake_provider_process() as base:
        litellm = load_litellm()
        client = httpx.AsyncClient()
        oai = openai.AsyncOpenAI(base_url=base, api_key=KEY, max_retries=0)
        neuron = mixture(base, 1, 1, 0).layers[0].neurons[0]
        request = NeuronRequest(messages=tuple(MESSAGES))
        # another litellm provider, sent to the loopback server through base_url
        os.environ.setdefault("BENCH_KEY", KEY)
        together = LLMNeuron.create(
            LLMConfig(model="together_ai/0ms/Llama-3-8b", base_url=base, api_key_env="BENCH_KEY"),
            settings=settings_for(base),
            path="together",
        )
        await neuron.prepare()
        await together.prepare()

        async def raw_httpx() -> None:
            r = await client.post(
                f"{base}/chat/completions",
                json={"model": "0ms/m", "messages": MESSAGES},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            r.json()

        async def sdk() -> None:
            await oai.chat.completions.create(model="0ms/m", messages=MESSAGES)  # type: ignore[arg-type]

        async def lite() -> None:
            await litellm.acompletion(
                model="openai/0ms/m",
                messages=MESSAGES,
                api_base=base,
                api_key=KEY,
                timeout=10,
                num_retries=0,
                max_retries=0,
            )

        async def moa_neuron() -> None:
            await neuron.generate(request)

        async def moa_together() -> None:
            await together.generate(request)

        print(f"per upstream call, sequential, 0 ms upstream, {args.calls} calls")
        floor_wall, floor_cpu = await per_call(raw_httpx, args.calls)
        rows = [("raw httpx POST (floor)", floor_wall, floor_cpu)]
        for name, fn in [
            ("openai SDK", sdk),
            ("litellm.acompletion", lite),
            ("moa LLMNeuron, bare name", moa_neuron),
            ("moa LLMNeuron, together_ai/", moa_together),
        ]:
            rows.append((name, *await per_call(fn, args.calls)))
        for name, wall, cpu in rows:
            ratio = cpu / floor_cpu
            print(f"  {name:30s} wall {wall:6.2f} ms  CPU {cpu:6.3f} ms  CPU/floor {ratio:5.2f}x")

        wide = mixture(base, 1, 12, 50)
        await wide.prepare()
        walls = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            await wide.layers[0].run(MESSAGES, (), origin=t0)
            walls.append(time.perf_counter() - t0)
        p50, p99 = pct(walls, 50), pct(walls, 99)
        print(
            f"12-wide layer at 50 ms: p50 wall / 50 ms = {p50 / 0.05:.3f}, p99 = {p99 / 0.05:.3f}"
        )

        deep = mixture(base, 3, 4, 50)
        await deep.prepare()
        walls = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            await deep.process("q")
            walls.append(time.perf_counter() - t0)
        p50, p99 = pct(walls, 50), pct(walls, 99)
        print(
            "3 layers x 4 + aggregator at 50 ms: wall / critical path (4 x 50 ms) "
            f"p50 = {p50 / 0.2:.3f}, p99 = {p99 / 0.2:.3f}"
        )

        sem = asyncio.Semaphore(64)

        async def one() -> None:
            async with sem:
                await neuron.generate(request)

        total = args.throughput_calls
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        rate = total / (time.perf_counter() - t0)
        print(f"throughput, 64 in flight, 0 ms upstream: {rate:,.0f} calls/s ({total} calls)")

        gc.collect()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        done = 0
        while done < args.rss_calls:
            batch = min(1000, args.rss_calls - done)
            await asyncio.gather(*(one() for _ in range(batch)))
            done += batch
        gc.collect()
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"max RSS growth over {args.rss_calls:,} more calls: {(rss1 - rss0) / 1024:.1f} MB")
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--throughput-calls", type=int, default=3000)
    parser.add_argument("--rss-calls", type=int, default=20000)
    asyncio.run(main(parser.parse_args()))
