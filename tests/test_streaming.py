"""`moa.stream()` / `stream_text()` against the fake provider streaming SSE through litellm."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest
from conftest import wait_until

from moa import (
    AggregationFailed,
    AllNeuronsFailed,
    Completed,
    MixtureOfAgents,
    MoAEvent,
    MoAEventAdapter,
    QueryError,
    StreamFailed,
    Token,
)
from moa.testing import FakeProvider, Reply

Build = Callable[..., MixtureOfAgents]

CONFIG = """
use_annotator: true
annotator: {model: "m/annotator"}
proposal_layers:
  - neurons: [{model: "m/a", weight: 2}, {model: "m/b"}, {model: "m/c"}]
  - neurons: [{model: "m/l2"}]
aggregation_layer: {model: "m/agg"}
"""

ANSWER = "Blue light is scattered more than red light by the air."


async def collect(moa: MixtureOfAgents, query: str = "Why is the sky blue?") -> list[MoAEvent]:
    return [event async for event in moa.stream(query)]


async def test_events_come_in_pipeline_order_with_the_aggregator_streamed(
    fake: FakeProvider, build: Build
) -> None:
    fake.script("m/agg", Reply(content=ANSWER, stream_delay=0.005))
    events = await collect(build(CONFIG))
    kinds = [e.kind for e in events]
    tokens = kinds.count("token")
    assert kinds == [
        "annotator_finished",
        "layer_started", "neuron_finished", "neuron_finished", "neuron_finished", "layer_finished",
        "layer_started", "neuron_finished", "layer_finished",
        "aggregation_started",
        *["token"] * tokens,
        "completed",
    ]  # fmt: skip
    assert tokens == len(ANSWER.split())  # one event per upstream delta, not one big piece
    text = "".join(e.text for e in events if isinstance(e, Token))
    final = events[-1]
    assert isinstance(final, Completed)
    assert text == final.result.content == ANSWER
    (request,) = fake.requests_for("m/agg")
    assert request.stream and request.body is not None
    assert request.body["stream_options"] == {"include_usage": True}
    assert final.result.aggregator.time_to_first_token is not None
    # the proposal layers are not streamed: they answer in one piece
    assert not any(r.stream for r in fake.requests if r.model != "m/agg")


async def test_tokens_arrive_while_the_upstream_is_still_streaming(
    fake: FakeProvider, build: Build
) -> None:
    fake.script("m/agg", Reply(content="one two three four five six seven", stream_delay=0.1))
    moa = build("proposal_layers: [{neurons: [{model: m/a}]}]\naggregation_layer: {model: m/agg}")
    async for event in moa.stream("q"):
        if isinstance(event, Token):
            (request,) = fake.requests_for("m/agg")
            assert event.text == "one "
            assert request.finished is None  # the server has not sent the rest yet
            break


async def test_neurons_are_reported_as_they_finish(fake: FakeProvider, build: Build) -> None:
    fake.script("m/slow", Reply(latency=0.3))
    config = """
    proposal_layers: [{neurons: [{model: m/slow}, {model: m/fast}]}]
    aggregation_layer: {model: m/agg}
    """
    events = await collect(build(config))
    finished = [e.neuron.model for e in events if e.kind == "neuron_finished"]
    assert finished == ["m/fast", "m/slow"]
    layer = next(e.layer for e in events if e.kind == "layer_finished")
    assert [n.model for n in layer.neurons] == ["m/slow", "m/fast"]  # the trace keeps config order


async def test_stream_and_process_give_the_same_result(fake: FakeProvider, build: Build) -> None:
    config = CONFIG + "seed: 7\n"
    for _ in range(2):
        fake.script("m/agg", ANSWER)
    streamed = (await collect(build(config)))[-1]
    processed = await build(config).process("Why is the sky blue?")
    assert isinstance(streamed, Completed)
    result = streamed.result
    assert result.content == processed.content == ANSWER
    assert result.keys is not None and list(result.keys()) == list(processed.keys())
    assert set(result.response_times) == set(processed.response_times)
    assert result.usage == processed.usage and result.usage.total_tokens > 0
    assert result.cost == processed.cost
    assert result.aggregated == processed.aggregated
    assert result.annotated_query == processed.annotated_query
    assert [n.text for n in result.neurons] == [n.text for n in processed.neurons]
    assert [n.usage for n in result.neurons] == [n.usage for n in processed.neurons]


async def test_stream_text_yields_only_the_answer(fake: FakeProvider, build: Build) -> None:
    fake.script("m/agg", Reply(content=ANSWER))
    pieces = [piece async for piece in build(CONFIG).stream_text("q")]
    assert len(pieces) > 1 and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == ANSWER


@pytest.mark.parametrize("fault", ["hang_after_first_token", "no_done"])
async def test_a_stream_failing_mid_way_reports_it_and_keeps_the_proposals(
    fake: FakeProvider, build: Build, fault: str
) -> None:
    fake.script("m/agg", Reply(content="first then more", fault=fault))  # type: ignore[arg-type]
    config = """
    proposal_layers: [{neurons: [{model: m/p1}, {model: m/p2}]}]
    aggregation_layer: {model: m/agg, timeout: 0.5}
    """
    events: list[MoAEvent] = []
    with pytest.raises(AggregationFailed) as caught:
        async for event in build(config).stream("q"):
            events.append(event)
    kinds = [e.kind for e in events]
    streamed = events[kinds.index("aggregation_started") + 1 : -1]
    assert streamed and all(isinstance(e, Token) for e in streamed)
    text = "".join(e.text for e in streamed if isinstance(e, Token))
    assert text == ("first " if fault == "hang_after_first_token" else "first then more")
    error = events[-1]
    assert isinstance(error, StreamFailed) and error.kind == "error"
    assert error.error_type == "AggregationFailed"
    assert error.error == str(caught.value)
    expected = "time" if fault == "hang_after_first_token" else "ended before"
    assert expected in error.error.lower()  # "TimeoutError: ..." via litellm, "timed out: ..." fast
    assert error.partial_text == text
    assert [n.text for n in error.layers[0].neurons] == ["answer from m/p1", "answer from m/p2"]
    assert caught.value.proposals == ["answer from m/p1", "answer from m/p2"]


async def test_a_layer_with_no_survivor_is_an_error_event_then_the_exception(
    fake: FakeProvider, build: Build
) -> None:
    fake.script("m/a", Reply(status=500))
    fake.script("m/b", Reply(status=401))
    config = """
    proposal_layers: [{neurons: [{model: m/a}, {model: m/b}]}]
    aggregation_layer: {model: m/agg}
    """
    events: list[MoAEvent] = []
    with pytest.raises(AllNeuronsFailed):
        async for event in build(config).stream("q"):
            events.append(event)
    assert [e.kind for e in events] == [
        "layer_started", "neuron_finished", "neuron_finished", "error",
    ]  # fmt: skip
    error = events[-1]
    assert isinstance(error, StreamFailed) and error.error_type == "AllNeuronsFailed"
    assert {n.error_type for n in error.layers[0].neurons} == {"ProviderError", "AuthenticationError"}
    assert fake.requests_for("m/agg") == []


async def test_leaving_early_closes_the_upstream_stream(fake: FakeProvider, build: Build) -> None:
    fake.script("m/agg", Reply(content="a b c d e f g h", stream_delay=0.2))
    moa = build("proposal_layers: [{neurons: [{model: m/a}]}]\naggregation_layer: {model: m/agg}")
    async with contextlib.aclosing(moa.stream_text("q")) as pieces:
        async for _ in pieces:
            break
    for _ in range(100):  # the server notices the disconnect on its own thread
        (request,) = fake.requests_for("m/agg")
        if request.finished is not None:
            break
        await asyncio.sleep(0.02)
    assert request.cancelled


async def test_events_round_trip_through_json(fake: FakeProvider, build: Build) -> None:
    events = await collect(build(CONFIG))
    for event in events:
        assert MoAEventAdapter.validate_json(event.model_dump_json()) == event


async def test_an_aggregator_failing_before_any_token(fake: FakeProvider, build: Build) -> None:
    fake.script("m/agg", Reply(status=503))
    moa = build("proposal_layers: [{neurons: [{model: m/a}]}]\naggregation_layer: {model: m/agg}")
    events: list[MoAEvent] = []
    with pytest.raises(AggregationFailed):
        async for event in moa.stream("q"):
            events.append(event)
    assert [e.kind for e in events][-2:] == ["aggregation_started", "error"]
    error = events[-1]
    assert isinstance(error, StreamFailed) and error.partial_text == ""
    assert "HTTP 503" in error.error and error.layers[0].neurons[0].ok


async def test_a_bad_query_is_an_error_event_too(build: Build) -> None:
    moa = build("proposal_layers: [{neurons: [{model: m/a}]}]\naggregation_layer: {model: m/agg}")
    events: list[MoAEvent] = []
    with pytest.raises(QueryError):
        async for event in moa.stream("   "):
            events.append(event)
    (error,) = events
    assert isinstance(error, StreamFailed) and error.error_type == "QueryError" and not error.layers


async def test_leaving_during_a_layer_cancels_its_calls(fake: FakeProvider, build: Build) -> None:
    fake.script("m/slow", Reply(latency=5))
    config = """
    proposal_layers: [{neurons: [{model: m/slow}, {model: m/fast}]}]
    aggregation_layer: {model: m/agg}
    """
    async with contextlib.aclosing(build(config).stream("q")) as events:
        async for event in events:
            if event.kind == "neuron_finished":
                # on a busy machine m/fast may answer before m/slow's request is even sent
                await wait_until(lambda: bool(fake.requests_for("m/slow")))
                break
    for _ in range(100):
        (request,) = fake.requests_for("m/slow")
        if request.finished is not None:
            break
        await asyncio.sleep(0.02)
    assert request.cancelled
    assert fake.requests_for("m/agg") == []
