"""A straggler under a layer deadline: how soon after the deadline does the answer arrive?

3 proposers (two answer in 50 ms, one never does) with `deadline: 0.3`, `min_responses: 2`
and an aggregator answering at once. At the deadline the hung call is cancelled (its
connection closed) and the layer goes on with the two answers. Reported: time from
`process()` to the result, and how far past the deadline the layer ended (cancellation
included).

    python benchmarks/straggler.py [--runs 30] [--deadline 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import fake_provider_process, machine, pct, settings_for

from moa import MixtureOfAgents, create_moa_from_config

KINDS = {"raw-http neuron": "bench-http", "llm neuron": "llm"}


def config(kind: str, deadline: float) -> dict[str, object]:
    return {
        "proposal_layers": [
            {
                "deadline": deadline,
                "min_responses": 2,
                "neurons": [
                    {"type": kind, "model": "50ms/A"},
                    {"type": kind, "model": "50ms/B"},
                    {"type": kind, "model": "hang/C"},
                ],
            }
        ],
        "aggregation_layer": {"type": kind, "model": "0ms/AGG"},
    }


async def main(runs: int, deadline: float) -> None:
    with fake_provider_process() as base_url:
        settings = settings_for(base_url)
        mixtures: dict[str, MixtureOfAgents] = {
            name: create_moa_from_config(config(kind, deadline), settings=settings)
            for name, kind in KINDS.items()
        }
        totals: dict[str, list[float]] = {name: [] for name in mixtures}
        overshoot: dict[str, list[float]] = {name: [] for name in mixtures}
        for mixture in mixtures.values():  # warm up
            await mixture.process("straggler?")
        for _ in range(runs):
            for name, mixture in mixtures.items():
                start = time.perf_counter()
                result = await mixture.process("straggler?")
                totals[name].append(time.perf_counter() - start)
                overshoot[name].append(result.layers[0].seconds - deadline)
                assert result.partial and result.layers[0].neurons[2].timed_out

    print(
        f"straggler: 2 proposers at 50 ms + 1 hung, deadline {deadline:g} s, aggregator at "
        f"0 ms, {runs} runs interleaved; {machine()}"
    )
    head = f"{'result p50':>10} {'p99':>8}   {'layer past deadline p50':>24} {'p99':>8}"
    print(f"  {'neuron':<16} {head}")
    for name in mixtures:
        t, o = totals[name], overshoot[name]
        print(
            f"  {name:<16} {pct(t, 50) * 1000:7.1f} ms {pct(t, 99) * 1000:5.1f} ms   "
            f"{pct(o, 50) * 1000:21.1f} ms {pct(o, 99) * 1000:5.1f} ms"
        )
    print(f"  goal: result <= deadline + 50 ms = {(deadline + 0.05) * 1000:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--deadline", type=float, default=0.3)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.deadline))
