"""`moa.adapters._streaming.events`: `stream()` for consumers that must not see an error twice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from moa import AllNeuronsFailed, MixtureOfAgents
from moa.adapters._streaming import events
from moa.events import Completed, LayerStarted, StreamFailed, Token
from moa.testing import FakeProvider, Reply

Build = Callable[..., MixtureOfAgents]
CONFIG = {
    "proposal_layers": [{"neurons": [{"model": "sa/A"}]}],
    "aggregation_layer": {"model": "sa/AGG"},
}


async def collect(moa: MixtureOfAgents) -> list[Any]:
    return [event async for event in events(moa, "q")]


async def test_tokens_progress_then_completed(build: Build, fake: FakeProvider) -> None:
    fake.script("sa/AGG", Reply(content="one two three", stream_delay=0.01))
    seen = await collect(build(CONFIG))
    assert isinstance(seen[0], LayerStarted)
    assert "".join(e.text for e in seen if isinstance(e, Token)) == "one two three"
    assert isinstance(seen[-1], Completed) and seen[-1].result.content == "one two three"


async def test_a_failure_is_raised_and_never_yielded(build: Build, fake: FakeProvider) -> None:
    fake.script("sa/A", Reply(status=400))
    seen: list[Any] = []
    with pytest.raises(AllNeuronsFailed):
        async for event in events(build(CONFIG), "q"):
            seen.append(event)
    assert not any(isinstance(e, (StreamFailed, Completed)) for e in seen)
