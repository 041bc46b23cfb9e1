"""Run a mixture on one question: python examples/quickstart.py ["question"] [config.yaml]

Needs PROVIDER_API_KEY (and optionally BASE_URL) in the environment or in .env.local.
"""

import asyncio
import json
import sys
from pathlib import Path

from moa_llm import MoAError, create_moa_from_config

HERE = Path(__file__).parent


async def run_moa(question: str, config: str) -> None:
    moa = create_moa_from_config(config, is_file_path=True)
    result = await moa.process(question)
    print(result["content"])
    print(json.dumps(result["response_times"], indent=2))
    print(f"Total Completion Time: {result['total_completion_time']:.2f} seconds")
    print(f"Tokens: {result.usage.prompt_tokens} in, {result.usage.completion_tokens} out")


if __name__ == "__main__":
    question = (
        sys.argv[1]
        if len(sys.argv) > 1
        else (
            "Explain the concept of quantum entanglement and its potential applications "
            "in quantum computing."
        )
    )
    config = sys.argv[2] if len(sys.argv) > 2 else str(HERE / "moa_config.yaml")
    try:
        asyncio.run(run_moa(question, config))
    except MoAError as exc:
        sys.exit(f"moa: {exc}")
