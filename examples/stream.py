"""Stream a mixture's progress and answer: python examples/stream.py ["question"] [config.yaml]

Prints each layer and neuron as it finishes (to stderr), the aggregator's answer as it
arrives (to stdout), then tokens and cost. Needs PROVIDER_API_KEY (and optionally BASE_URL)
in the environment or in .env.local.
"""

import asyncio
import sys
from pathlib import Path

from moa import AggregationFailed, AllNeuronsFailed, MoAError, create_moa_from_config

HERE = Path(__file__).parent


async def stream_moa(question: str, config: str) -> None:
    moa = create_moa_from_config(config, is_file_path=True)
    try:
        async for event in moa.stream(question):
            if event.kind == "neuron_finished":
                neuron = event.neuron
                outcome = f"failed: {neuron.error_type}" if neuron.error else "answered"
                print(f"  {neuron.model} {outcome} in {neuron.seconds:.2f}s", file=sys.stderr)
            elif event.kind == "layer_started":
                print(f"{event.layer}...", file=sys.stderr)
            elif event.kind == "token":
                print(event.text, end="", flush=True)
            elif event.kind == "completed":
                result = event.result
                cost = f"${result.cost:.6f}" if result.cost is not None else "unknown"
                print(
                    f"\n\nTokens: {result.usage.prompt_tokens} in, "
                    f"{result.usage.completion_tokens} out; cost: {cost}; "
                    f"{result.total_completion_time:.2f} s",
                )
    except (AllNeuronsFailed, AggregationFailed) as exc:  # stream() raises a failure
        print(f"\n({len(exc.layers)} layers ran before the failure)", file=sys.stderr)
        raise


if __name__ == "__main__":
    question = sys.argv[1] if len(sys.argv) > 1 else "Why is the sky blue?"
    config = sys.argv[2] if len(sys.argv) > 2 else str(HERE / "small.yaml")
    try:
        asyncio.run(stream_moa(question, config))
    except MoAError as exc:
        sys.exit(f"moa: {exc}")
