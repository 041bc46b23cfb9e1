"""The shared rate limiter: its arithmetic, and the same behaviour from every backend that can
run here without Ray (in-process, a real redis-server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from moa.ratelimit import (
    HORIZON,
    BucketState,
    LocalBackend,
    RateLimit,
    RateLimiter,
    bucket_key,
    estimate_tokens,
)
from moa.ratelimit._redis import RedisBackend

RPM_1200 = RateLimit(requests_per_minute=1200)


def test_calls_are_spaced_evenly_and_reserved_at_most_a_horizon_ahead() -> None:
    state = BucketState()
    starts = []
    now = 100.0
    for _ in range(10):
        answer = state.reserve(now, RPM_1200, 0, 60)
        assert answer.granted
        starts.append(now + answer.delay)
    assert starts == pytest.approx([100.0 + 0.05 * i for i in range(10)])
    later = state.reserve(now, RPM_1200, 0, 60)  # the 11th starts at 100.5: a horizon away
    assert later.granted and later.delay == pytest.approx(HORIZON)
    refused = state.reserve(now, RPM_1200, 0, 60)
    assert not refused.granted and refused.delay == pytest.approx(0.05)


def test_tokens_are_charged_up_front_and_settled() -> None:
    state = BucketState()
    limit = RateLimit(tokens_per_minute=6000)  # 100 tokens a second
    assert state.reserve(0.0, limit, 20, 60).delay == 0  # 20 tokens: next free at 0.2
    assert state.reserve(0.0, limit, 20, 60).delay == pytest.approx(0.2)
    state.settle(limit, -20)  # the second call used 0 tokens after all
    assert state.reserve(0.0, limit, 1, 60).delay == pytest.approx(0.2)


def test_concurrency_leases_are_released_or_expire() -> None:
    state = BucketState()
    limit = RateLimit(max_concurrency=2)
    first = state.reserve(0.0, limit, 0, 10)
    second = state.reserve(0.0, limit, 0, 10)
    assert first.granted and second.granted and first.lease != second.lease
    assert not state.reserve(0.0, limit, 0, 10).granted
    assert first.lease is not None
    state.release(first.lease)
    assert state.reserve(0.0, limit, 0, 10).granted
    assert state.reserve(11.0, limit, 0, 10).granted  # a dead holder's lease expired


def test_a_pause_holds_back_every_later_call() -> None:
    state = BucketState()
    state.pause(0.0, 2.0)
    answer = state.reserve(0.0, RateLimit(requests_per_minute=60000), 0, 10)
    assert not answer.granted and answer.delay == pytest.approx(2.0 - HORIZON)
    assert state.reserve(1.9, RateLimit(requests_per_minute=60000), 0, 10).delay == (
        pytest.approx(0.1)
    )


def test_bucket_key_never_holds_the_api_key() -> None:
    key = bucket_key("http://127.0.0.1:9/v1", "openai/m", "sk-secret-123")
    assert "sk-secret-123" not in key
    assert key.startswith("http://127.0.0.1:9/v1|openai/m|") and len(key.split("|")[2]) == 12
    assert bucket_key("p", "m", None) == "p|m|-"
    assert estimate_tokens([{"role": "user", "content": "x" * 400}], 50) == 100 + 4 + 50 + 1


@pytest.fixture(params=["local", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    if request.param == "local":
        yield RateLimiter(LocalBackend())
        return
    backend = RedisBackend(request.getfixturevalue("redis_url"))
    client = backend._scripts()[0]
    await client.flushdb()
    yield RateLimiter(backend)
    await backend.aclose()


async def _starts(limiter: RateLimiter, key: str, limit: RateLimit, calls: int) -> list[float]:
    starts: list[float] = []

    async def call() -> None:
        async with limiter.permit(key, limit):
            starts.append(time.monotonic())

    await asyncio.gather(*(call() for _ in range(calls)))
    return sorted(starts)


async def test_backends_space_concurrent_callers(limiter: RateLimiter) -> None:
    before = time.monotonic()
    starts = await _starts(limiter, "p|m|-", RateLimit(requests_per_minute=6000), 30)
    # 6000/min: one start every 10 ms from the first reservation, which is made after `before`.
    # A sleep never ends early, so the last call cannot start less than 290 ms after `before`
    # however loaded the machine is. (Measured from the first *start* instead, a first caller
    # woken late would shorten the span: that flaked with Redis at load ~3.)
    assert starts[-1] - before >= 0.29 - 0.002


async def test_backends_cap_calls_in_flight(limiter: RateLimiter) -> None:
    in_flight = peak = 0

    async def call() -> None:
        nonlocal in_flight, peak
        async with limiter.permit("p|m|k", RateLimit(max_concurrency=3)):
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1

    await asyncio.gather(*(call() for _ in range(20)))
    assert peak == 3


async def test_backends_pause_every_caller_of_a_key(limiter: RateLimiter) -> None:
    await limiter.pause("p|m|k", 0.3)
    started = time.monotonic()
    async with limiter.permit("p|m|k", RateLimit(requests_per_minute=60000)):
        waited = time.monotonic() - started
    assert waited > 0.28
    async with limiter.permit("p|other|k", RateLimit(requests_per_minute=60000)) as permit:
        assert permit.waited < 0.1  # another bucket is not paused


async def test_backends_settle_tokens(limiter: RateLimiter) -> None:
    limit = RateLimit(tokens_per_minute=60000)  # 1000 tokens a second
    async with limiter.permit("p|t|k", limit, tokens=10) as permit:
        await permit.settle(310)  # 300 more than estimated: 0.3 s of debt
    started = time.monotonic()
    async with limiter.permit("p|t|k", limit, tokens=1):
        assert time.monotonic() - started > 0.25


async def test_an_unreachable_redis_is_a_clear_error_without_the_url() -> None:
    import socket

    from moa import RateLimiterUnavailable

    with socket.socket() as sock:  # a free port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    limiter = RateLimiter(RedisBackend(f"redis://:hunter2@127.0.0.1:{port}/0"))
    with pytest.raises(RateLimiterUnavailable) as caught:
        async with limiter.permit("p|m|k", RPM_1200):
            pass
    assert "MOA_REDIS_URL" in str(caught.value) and "hunter2" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
