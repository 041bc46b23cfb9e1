"""The shared rate limit is applied by moa around each attempt of every neuron, whatever its
type (moa.layers._call.attempt): a real installed plugin neuron that calls the fake provider
over HTTP is limited, LLMNeuron is limited exactly once per attempt, and a neuron that calls
no provider (`vote`) is not counted. The limiter in this process records what it granted."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from moa import MixtureOfAgents, create_moa_from_config
from moa.ratelimit import LocalBackend, RateLimit, Reservation, use_backend
from moa.testing import FakeProvider, RecordedRequest, Reply
from tests.conftest import CANARY_KEY


class Recording(LocalBackend):
    """The in-process backend, recording the bucket of each granted slot and each settle."""

    def __init__(self) -> None:
        super().__init__()
        self.granted: list[str] = []
        self.settled: list[str] = []

    async def reserve(
        self, key: str, limit: RateLimit, tokens: int, lease_seconds: float
    ) -> Reservation:
        answer = await super().reserve(key, limit, tokens, lease_seconds)
        if answer.granted:
            self.granted.append(key)
        return answer

    async def settle(self, key: str, limit: RateLimit, tokens: int) -> None:
        self.settled.append(key)
        await super().settle(key, limit, tokens)


@pytest.fixture
def backend() -> Iterator[Recording]:
    recording = Recording()
    use_backend(recording)
    try:
        yield recording
    finally:
        use_backend(None)


@pytest.fixture
def key(chatapi: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The example plugin moa-chatapi installed (see conftest), and its key set."""
    monkeypatch.setenv("CHATAPI_KEY", CANARY_KEY)
    return CANARY_KEY


def one_at_a_time(requests: list[RecordedRequest]) -> bool:
    """Whether the fake provider never had two of these requests in flight at once."""
    spans = sorted((r.started, r.finished) for r in requests)
    return all(
        finished is not None and finished <= next_start
        for (_, finished), (next_start, _) in itertools.pairwise(spans)
    )


def chatapi_config(fake: FakeProvider, **top: Any) -> dict[str, Any]:
    neuron = {"type": "chatapi", "model": "c/M", "url": fake.base_url}
    return {
        "proposal_layers": [{"neurons": [neuron, neuron, neuron]}],
        "aggregation_layer": {**neuron, "model": "c/AGG"},
        "timeout": 10,
        **top,
    }


async def test_a_plugin_neuron_is_held_to_max_concurrency(
    fake: FakeProvider, key: str, backend: Recording
) -> None:
    fake.set_default(Reply(latency=0.05, usage=(1000, 1000)))
    limit = {"max_concurrency": 1, "tokens_per_minute": 100_000_000}
    config = chatapi_config(fake, rate_limit=limit)
    async with create_moa_from_config(config, is_file_path=False) as moa:
        result = await moa.process("hi")
    assert all(n.error is None for n in result.layers[0].neurons)
    calls = fake.requests_for("c/M")
    assert len(calls) == 3 and one_at_a_time(calls)  # without the limit: all 3 at once
    (bucket,) = {k for k in backend.granted if "c/M" in k}
    assert bucket.startswith("chatapi|c/M|") and CANARY_KEY not in bucket
    assert backend.settled.count(bucket) == 3  # each call's estimate settled with its usage


async def test_a_plugin_stream_holds_its_slot_to_the_end(
    fake: FakeProvider, key: str, backend: Recording
) -> None:
    fake.script("c/AGG", *[Reply("one two three four", stream_delay=0.02)] * 2)
    config = chatapi_config(fake)
    config["aggregation_layer"]["rate_limit"] = {"max_concurrency": 1}
    async with create_moa_from_config(config, is_file_path=False) as moa:

        async def streamed() -> str:
            return "".join([piece async for piece in moa.stream_text("hi")])

        texts = await asyncio.gather(streamed(), streamed())
    assert list(texts) == ["one two three four"] * 2
    calls = fake.requests_for("c/AGG")
    assert all(c.stream for c in calls) and one_at_a_time(calls)
    assert [k.split("|")[:2] for k in backend.granted] == [["chatapi", "c/AGG"]] * 2


async def test_a_retry_after_from_a_plugin_neuron_pauses_its_bucket(
    fake: FakeProvider, key: str
) -> None:
    fake.script("c/M", Reply(status=429, retry_after=1))
    config = chatapi_config(fake, rate_limit={}, retry={"max_retries": 0})
    config["proposal_layers"][0]["neurons"] = [config["proposal_layers"][0]["neurons"][0]]
    async with create_moa_from_config(config, is_file_path=False) as moa:
        with pytest.raises(Exception):  # noqa: B017 - the 429 fails the only proposer
            await moa.process("first")
        await moa.process("second")
    first, second = fake.requests_for("c/M")
    assert second.started - first.started >= 0.95  # held back by the bucket's pause


async def test_llm_neurons_take_one_slot_per_attempt(
    fake: FakeProvider, build: Callable[..., MixtureOfAgents], backend: Recording
) -> None:
    """Limited once per attempt, retries included: limited twice, an attempt would wait
    for the slot it holds itself (max_concurrency 1) until its timeout."""
    fake.script("meta-llama/M", Reply(status=503))
    fake.set_default(Reply(latency=0.02))
    moa = build(
        """
        rate_limit: {max_concurrency: 1}
        timeout: 10
        retry: {max_retries: 1, backoff_base: 0.01}
        proposal_layers:
          - neurons:
            - {model: "meta-llama/M"}
            - {model: "meta-llama/M"}
        aggregation_layer:
          model: "meta-llama/M"
        """
    )
    result = await moa.process("q")
    assert all(n.error is None for n in result.layers[0].neurons)
    calls = fake.requests_for("meta-llama/M")
    assert len(calls) == 4 and one_at_a_time(calls)  # a 503, its retry, the other, the aggregator
    assert len(backend.granted) == 4 and len(set(backend.granted)) == 1


async def test_a_vote_neuron_is_not_counted_under_a_top_level_limit(
    fake: FakeProvider, build: Callable[..., MixtureOfAgents], backend: Recording
) -> None:
    """One request a minute per bucket: each LLM model is called once, so none waits; the
    three votes, were they limited, would share one bucket and two would time out."""
    moa = build(
        """
        rate_limit: {requests_per_minute: 1}
        timeout: 5
        retry: {max_retries: 0}
        proposal_layers:
          - neurons:
            - {model: "meta-llama/A"}
            - {model: "meta-llama/B"}
          - neurons:
            - {type: vote}
            - {type: vote, extract: exact}
        aggregation_layer:
          type: vote
        """
    )
    result = await moa.process("q")
    assert all(n.error is None for layer in result.layers for n in layer.neurons)
    assert sorted(k.split("|")[1] for k in backend.granted) == [
        "openai/meta-llama/A",
        "openai/meta-llama/B",
    ]


async def test_moa_eval_takes_a_slot_on_a_cache_miss_only(
    fake: FakeProvider, build: Callable[..., MixtureOfAgents], backend: Recording, tmp_path: Path
) -> None:
    from moa.eval.cache import CallCache, instrument

    config = """
        rate_limit: {max_concurrency: 4}
        proposal_layers:
          - neurons:
            - {model: "meta-llama/A"}
        aggregation_layer:
          model: "meta-llama/AGG"
        """
    cache = CallCache(tmp_path / "calls.sqlite")
    moa = instrument(build(config), cache)
    await moa.process("q")
    assert len(backend.granted) == len(fake.requests) == 2
    await moa.process("q")  # answered from the cache: no call, no slot
    assert len(backend.granted) == len(fake.requests) == 2 and cache.hits == 2
    cache.close()
