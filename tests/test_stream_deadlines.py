"""Nothing waits for ever, streams included: once a stream has started, `stream_idle_timeout`
bounds the wait for each next content delta and `stream_timeout` the whole attempt, on both
call paths. The upstream sends one token, then only `: keep-alive` comments for ever (the
fake provider's `keep_alive` fault): bytes keep arriving, content never does."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from conftest import HANG_GUARD, wait_until

from moa import AggregationFailed, ConfigError, StreamFailed
from moa.events import Token
from moa.testing import FakeProvider, Reply


@pytest.fixture(params=["fast", "litellm"])
def path_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MOA_FAST_PATH", "1" if request.param == "fast" else "0")
    return str(request.param)


def config(**limits: float) -> dict[str, Any]:
    return {
        "timeout": 30,
        "proposal_layers": [{"neurons": [{"model": "m/A"}]}],
        "aggregation_layer": {"model": "m/AGG", **limits},
        "retry": {"max_retries": 2},
    }


async def stream_until_it_fails(build: Any, cfg: dict[str, Any]) -> tuple[list[str], str, float]:
    """The tokens, the failure's message, and the seconds from the first token to it."""
    mixture = build(cfg)
    await mixture.prepare()
    tokens: list[str] = []
    first = 0.0
    try:
        async with asyncio.timeout(HANG_GUARD):
            async for event in mixture.stream("hi"):
                if isinstance(event, Token):
                    first = first or time.perf_counter()
                    tokens.append(event.text)
                elif isinstance(event, StreamFailed):
                    return tokens, event.error, time.perf_counter() - first
    except AggregationFailed as exc:
        return tokens, str(exc), time.perf_counter() - first
    raise AssertionError("the stream ended without failing")


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"stream_idle_timeout": 0.3}, "no new content for 0.3 s (stream_idle_timeout)"),
        (
            {"stream_idle_timeout": 20, "stream_timeout": 0.5},
            "the stream took longer than 0.5 s (stream_timeout)",
        ),
    ],
    ids=["idle", "total"],
)
async def test_a_stream_kept_alive_without_content_ends_at_its_limit(
    limits: dict[str, float], reason: str, path_mode: str, fake: FakeProvider, build: Any
) -> None:
    fake.script("m/AGG", Reply(content="first and never more", fault="keep_alive"))
    tokens, error, after_first = await stream_until_it_fails(build, config(**limits))
    assert tokens == ["first "]  # delivered, and never restarted or continued by a retry
    assert f"aggregation_layer (m/AGG): {reason}" in error
    if "stream_timeout" not in limits:  # the idle limit runs from the token on
        assert after_first >= limits["stream_idle_timeout"] * 0.9  # not before (clock slack)
    (request,) = fake.requests_for("m/AGG")  # a started stream is not retried
    await wait_until(lambda: fake.requests_for("m/AGG")[0].cancelled)  # connection closed
    assert request.stream


async def test_a_slow_but_steady_stream_is_not_cut(fake: FakeProvider, build: Any) -> None:
    """The idle limit is between deltas, not for the whole answer."""
    fake.script("m/AGG", Reply(content="one two three four five six", stream_delay=0.1))
    mixture = build(config(stream_idle_timeout=0.5))
    async with asyncio.timeout(HANG_GUARD):
        text = [e.text async for e in mixture.stream("hi") if isinstance(e, Token)]
    assert "".join(text) == "one two three four five six"


def test_stream_limits_are_config_keys_with_defaults(build: Any) -> None:
    mixture = build({**config(stream_timeout=90), "stream_idle_timeout": 15, "stream_timeout": 300})
    (proposer,) = mixture.layers[0].plans
    assert (proposer.stream_limits.idle, proposer.stream_limits.total) == (15, 300)
    agg = mixture.aggregation.plan
    assert (agg.stream_limits.idle, agg.stream_limits.total) == (15, 90)
    defaults = build(config()).aggregation.plan.stream_limits
    assert (defaults.idle, defaults.total) == (60, 600)
    for bad in (0, -1, float("inf")):
        with pytest.raises(ConfigError, match="stream_idle_timeout"):
            build(config(stream_idle_timeout=bad))
