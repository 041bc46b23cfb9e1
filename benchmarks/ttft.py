"""Time to first aggregator token: how long after the upstream sends its first token does a
`moa.stream()` consumer see it, next to a raw httpx client and a bare litellm call.

The fake provider (loopback, its own thread) waits `--latency` seconds after a request
arrives, then streams one word every `--delay` seconds; its first content chunk leaves at
about `request arrival + latency`, measured on the same monotonic clock the client uses.
The figure printed for each client is the lag from that moment to the client holding the
first token: what the client adds on top of the upstream's own first token.

    python benchmarks/ttft.py [--runs 20] [--latency 0.05] [--delay 0.02]

Timings on a shared machine are noisy: compare the rows with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
from pydantic import SecretStr

from moa import Settings, Token, create_moa_from_config
from moa.neurons.llm import load_litellm  # offline cost map, no banners
from moa.testing import FakeProvider, Reply

AGGREGATOR = "bench/aggregator"
WORDS = " ".join(f"word{i}" for i in range(12))
CONFIG = """
proposal_layers:
  - neurons: [{model: bench/a}, {model: bench/b}, {model: bench/c}]
aggregation_layer: {model: bench/aggregator, max_retries: 0}
"""
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]

Measure = Callable[[FakeProvider], Awaitable[float]]


def upstream_first_token(fake: FakeProvider, latency: float) -> float:
    """When the fake server sent its first content chunk (its monotonic clock)."""
    return fake.requests_for(AGGREGATOR)[-1].started + latency


async def raw_httpx(fake: FakeProvider, client: httpx.AsyncClient) -> float:
    body = {"model": AGGREGATOR, "messages": MESSAGES, "stream": True}
    url = f"{fake.base_url}/chat/completions"
    async with client.stream("POST", url, json=body) as response:
        lines = response.aiter_lines()
        async for line in lines:
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                first = time.monotonic()
                break
        async for _ in lines:  # drain, as the other clients do
            pass
    return first


async def bare_litellm(fake: FakeProvider) -> float:
    litellm = load_litellm()
    response = await litellm.acompletion(
        model=f"openai/{AGGREGATOR}",
        messages=MESSAGES,
        api_base=fake.base_url,
        api_key="not-needed",
        stream=True,
        stream_options={"include_usage": True},
        timeout=30,
        num_retries=0,
        max_retries=0,
    )
    first: float | None = None
    async for chunk in response:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.monotonic()
    assert first is not None
    return first


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds before headers")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between tokens")
    args = parser.parse_args()

    with FakeProvider() as fake:
        fake.respond_with(AGGREGATOR, lambda _: Reply(WORDS, args.latency, stream_delay=args.delay))
        settings = Settings(
            provider_api_key=SecretStr("not-needed"), base_url=fake.base_url, max_retries=0
        )
        moa = create_moa_from_config(CONFIG, is_file_path=False, settings=settings)
        await moa.prepare()

        async def through_moa(fake: FakeProvider) -> float:
            first: float | None = None
            async for event in moa.stream("Why is the sky blue?"):
                if first is None and isinstance(event, Token):
                    first = time.monotonic()
            assert first is not None
            return first

        async with httpx.AsyncClient(timeout=30) as client:

            async def through_httpx(fake: FakeProvider) -> float:
                return await raw_httpx(fake, client)

            clients: dict[str, Measure] = {
                "raw httpx": through_httpx,
                "litellm.acompletion(stream=True)": bare_litellm,
                "moa.stream()": through_moa,
            }
            lags: dict[str, list[float]] = {name: [] for name in clients}
            for measure in clients.values():  # warm-up: connections, imports, caches
                await measure(fake)
            for _ in range(args.runs):
                for name, measure in clients.items():  # interleaved: noise hits all alike
                    first = await measure(fake)
                    lags[name].append(first - upstream_first_token(fake, args.latency))
        await moa.aclose()

    print(
        f"upstream: first token {args.latency * 1000:.0f} ms after the request arrives, then "
        f"one every {args.delay * 1000:.0f} ms; {args.runs} runs\n"
    )
    print(f"{'client':34} {'lag p50 (ms)':>13} {'p90 (ms)':>9}")
    for name, values in lags.items():
        p50 = statistics.median(values) * 1000
        p90 = statistics.quantiles(values, n=10)[-1] * 1000 if len(values) > 1 else p50
        print(f"{name:34} {p50:13.2f} {p90:9.2f}")
    moa_p50 = statistics.median(lags["moa.stream()"])
    for name in ("raw httpx", "litellm.acompletion(stream=True)"):
        diff = (moa_p50 - statistics.median(lags[name])) * 1000
        print(f"\nmoa.stream() - {name}: {diff:+.2f} ms at p50", end="")
    print()


if __name__ == "__main__":
    asyncio.run(main())
