"""`moa._streaming.events`: the one adapter between a mixture and streamed output."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from moa import AllNeuronsFailed, MixtureOfAgents, ProviderError
from moa._streaming import Completed, Progress, StreamError, Token, events

Build = Callable[..., MixtureOfAgents]
CONFIG = {
    "proposal_layers": [{"neurons": [{"model": "sa/A"}]}],
    "aggregation_layer": {"model": "sa/AGG"},
}


async def collect(moa: MixtureOfAgents) -> list[Any]:
    return [event async for event in events(moa, "q")]


async def test_without_stream_it_runs_process_and_reports_one_token(build: Build) -> None:
    moa = build(CONFIG)
    no_stream = SimpleNamespace(process=moa.process)  # a mixture from before issue 4
    token, completed = [event async for event in events(no_stream, "q")]  # type: ignore[arg-type]
    assert token == Token("answer from sa/AGG")
    assert isinstance(completed, Completed) and completed.result.content == "answer from sa/AGG"


def with_stream(moa: MixtureOfAgents, *items: Any) -> MixtureOfAgents:
    async def stream(query: object) -> AsyncIterator[Any]:
        for item in items:
            if isinstance(item, BaseException):
                raise item
            yield item

    moa.stream = stream  # type: ignore[attr-defined]
    return moa


async def test_stream_events_are_mapped(build: Build) -> None:
    result = await build(CONFIG).process("q")
    moa = with_stream(
        build(CONFIG),
        SimpleNamespace(kind="layer_started", layer="proposal_layers[0]", index=0),
        SimpleNamespace(kind="token", text="a"),
        SimpleNamespace(kind="token", text="b"),
        SimpleNamespace(kind="completed", result=result),
    )
    progress, a, b, completed = await collect(moa)
    assert isinstance(progress, Progress) and progress.kind == "layer_started"
    assert (a, b) == (Token("a"), Token("b"))
    assert completed == Completed(result)


async def test_error_event_then_the_mixtures_own_exception(build: Build) -> None:
    failure = AllNeuronsFailed("all 1 neurons failed", [ProviderError("down")])
    error = SimpleNamespace(kind="error", error="all 1 neurons failed", error_type="X", layers=())
    moa = with_stream(build(CONFIG), SimpleNamespace(kind="token", text="a"), error, failure)
    with pytest.raises(AllNeuronsFailed):
        await collect(moa)


async def test_error_event_alone_is_raised_as_stream_error(build: Build) -> None:
    error = SimpleNamespace(
        kind="error", error="aggregator failed", error_type="AggregationFailed", layers=("L",)
    )
    with pytest.raises(StreamError, match="aggregator failed") as caught:
        await collect(with_stream(build(CONFIG), error))
    assert caught.value.error_type == "AggregationFailed" and caught.value.layers == ("L",)
