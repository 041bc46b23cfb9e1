"""Fan-out cost, measured side by side in one run against the loopback fake provider.

    python benchmarks/fanout.py [--calls 300] [--rss-calls 20000]

The fake provider runs in child processes (one answering at once, one after 50 ms), so
`time.process_time()` here is the client's CPU alone. Printed as ratios to the raw-httpx floor
and to the ideal wall time, since absolute numbers depend on the (shared, 2-core) machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")

MESSAGES = [{"role": "user", "content": "How far is the moon?"}]


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moa.testing", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


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


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[len(ordered) // 2], ordered[max(0, int(len(ordered) * 0.99) - 1)]


def build(base: str, config: dict[str, Any]) -> Any:
    from pydantic import SecretStr

    from moa import MixtureOfAgents, Settings

    settings = Settings(provider_api_key=SecretStr("sk-bench"), base_url=base, max_retries=0)
    return MixtureOfAgents.from_config(config, settings=settings)


def layers(width: int, depth: int) -> dict[str, Any]:
    return {
        "proposal_layers": [
            {"neurons": [{"model": f"bench/m{i}"} for i in range(width)]} for _ in range(depth)
        ],
        "aggregation_layer": {"model": "bench/agg"},
    }


async def main(args: argparse.Namespace) -> None:
    import httpx
    import openai

    from moa.neurons.base import NeuronRequest
    from moa.neurons.llm import LLMConfig, LLMNeuron, load_litellm

    fast_proc, fast = start_server(0.0)
    slow_proc, slow = start_server(0.05)
    try:
        litellm = load_litellm()
        client = httpx.AsyncClient()
        oai = openai.AsyncOpenAI(base_url=fast, api_key="sk-bench", max_retries=0)
        moa_fast = build(fast, layers(1, 1))
        neuron = moa_fast.layers[0].neurons[0]
        request = NeuronRequest(messages=tuple(MESSAGES))
        from pydantic import SecretStr

        from moa import Settings

        # another litellm provider format, sent to the loopback server through base_url
        os.environ.setdefault("BENCH_KEY", "sk-bench")
        together = LLMNeuron(
            LLMConfig(
                model="together_ai/meta-llama/Llama-3-8b-chat-hf",
                base_url=fast,
                api_key_env="BENCH_KEY",
            ),
            settings=Settings(provider_api_key=SecretStr("sk-bench"), max_retries=0),
        )
        await neuron.prepare()
        await together.prepare()

        async def raw_httpx() -> None:
            r = await client.post(
                f"{fast}/chat/completions",
                json={"model": "bench/m", "messages": MESSAGES},
                headers={"Authorization": "Bearer sk-bench"},
            )
            r.json()

        async def sdk() -> None:
            await oai.chat.completions.create(model="bench/m", messages=MESSAGES)  # type: ignore[arg-type]

        async def lite() -> None:
            await litellm.acompletion(
                model="openai/bench/m",
                messages=MESSAGES,
                api_base=fast,
                api_key="sk-bench",
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

        wide = build(slow, layers(12, 1))
        await wide.prepare()
        walls = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            await wide.layers[0].run(MESSAGES, (), origin=t0)
            walls.append(time.perf_counter() - t0)
        p50, p99 = percentiles(walls)
        print(
            f"12-wide layer at 50 ms: p50 wall / 50 ms = {p50 / 0.05:.3f}, p99 = {p99 / 0.05:.3f}"
        )

        deep = build(slow, layers(4, 3))
        await deep.prepare()
        walls = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            await deep.process("q")
            walls.append(time.perf_counter() - t0)
        p50, p99 = percentiles(walls)
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
    finally:
        for proc in (fast_proc, slow_proc):
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--throughput-calls", type=int, default=3000)
    parser.add_argument("--rss-calls", type=int, default=20000)
    asyncio.run(main(parser.parse_args()))
