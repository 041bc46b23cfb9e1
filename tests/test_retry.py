"""moa.retry: what is retried, how long it waits, and that streams are never restarted once
they have produced something. Pure unit tests: no server, no sleeping (delays are 0)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from moa.errors import (
    AuthenticationError,
    InvalidResponseError,
    NeuronError,
    ProviderConnectionError,
    ProviderError,
    RateLimitError,
)
from moa.errors import TimeoutError as NeuronTimeout
from moa.retry import Retrying, RetryPolicy, is_retryable

FAST = RetryPolicy(max_retries=2, backoff_base=0.0, backoff_max=0.0)


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (RateLimitError("slow down", status_code=429), True),
        (NeuronTimeout("no answer"), True),
        (NeuronTimeout("408", status_code=408), True),
        (ProviderConnectionError("reset"), True),
        (ProviderError("conflict", status_code=409), True),
        (ProviderError("boom", status_code=500), True),
        (ProviderError("bad gateway", status_code=502), True),
        (ProviderError("unavailable", status_code=503), True),
        (ProviderError("bad request", status_code=400), False),
        (AuthenticationError("who are you", status_code=401), False),
        (AuthenticationError("forbidden", status_code=403), False),
        (ProviderError("no such model", status_code=404), False),
        (ProviderError("unprocessable", status_code=422), False),
        (ProviderError("no status"), False),
        (InvalidResponseError("empty content"), False),
        (InvalidResponseError("5xx-looking but a bad body", status_code=500), False),
        (ValueError("a bug"), False),
    ],
)
def test_classifier(error: BaseException, retryable: bool) -> None:
    assert is_retryable(error) is retryable


def test_backoff_doubles_up_to_the_cap_with_jitter_below() -> None:
    policy = RetryPolicy(max_retries=10, backoff_base=0.5, backoff_max=8.0, jitter=0.25)
    error = ProviderError("boom", status_code=500)
    no_jitter = [policy.delay(n, error, rand=lambda: 0.0) for n in range(6)]
    assert no_jitter == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert policy.delay(1, error, rand=lambda: 1.0) == 0.75  # at most 25 % shaved off


def test_out_of_retries_or_not_retryable_means_no_delay() -> None:
    policy = RetryPolicy(max_retries=2)
    assert policy.delay(2, ProviderError("boom", status_code=500)) is None
    assert policy.delay(0, ProviderError("bad", status_code=400)) is None


def test_retry_after_is_honoured_up_to_the_cap_and_ends_retries_beyond() -> None:
    policy = RetryPolicy(max_retries=3, max_retry_after=10.0)
    assert policy.delay(0, RateLimitError("wait", status_code=429, retry_after=3.0)) == 3.0
    assert policy.delay(0, RateLimitError("wait", status_code=429, retry_after=0.0)) == 0.0
    assert policy.delay(0, RateLimitError("wait", status_code=429, retry_after=60.0)) is None


async def test_run_retries_retryable_errors_and_counts_attempts() -> None:
    outcomes: list[Exception | str] = [
        ProviderError("boom", status_code=503),
        RateLimitError("wait", status_code=429, retry_after=0.0),
        "ok",
    ]

    async def attempt() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    retrying = Retrying(FAST)
    assert await retrying.run(attempt) == "ok"
    assert retrying.attempts == 3 and len(retrying.errors) == 2


async def test_run_gives_up_with_the_last_error_and_its_attempt_count() -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise ProviderError(f"boom {calls}", status_code=500)

    retrying = Retrying(FAST)
    with pytest.raises(ProviderError, match="boom 3") as caught:
        await retrying.run(attempt)
    assert calls == 3 and caught.value.attempts == 3


async def test_run_never_retries_a_non_retryable_error_or_a_bug() -> None:
    for error in (AuthenticationError("no", status_code=401), KeyError("bug")):
        calls = 0

        async def attempt(error: Exception = error) -> str:
            nonlocal calls
            calls += 1
            raise error

        with pytest.raises(type(error)):
            await Retrying(FAST).run(attempt)
        assert calls == 1


async def test_each_attempt_is_bounded_by_the_timeout() -> None:
    started: list[int] = []
    cancelled: list[int] = []

    async def attempt() -> str:
        started.append(1)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(1)
            raise
        return "never"

    retrying = Retrying(RetryPolicy(max_retries=1, backoff_base=0.0), timeout=0.01)
    with pytest.raises(NeuronTimeout, match=r"no answer within 0\.01 s") as caught:
        await retrying.run(attempt)
    assert len(started) == len(cancelled) == 2
    assert caught.value.__context__ is None and caught.value.attempts == 2


async def test_an_attempt_raising_its_own_timeout_error_is_not_confused_with_ours() -> None:
    async def attempt() -> str:
        raise NeuronTimeout("upstream 408", status_code=408)

    with pytest.raises(NeuronTimeout, match="upstream 408"):
        await Retrying(RetryPolicy(max_retries=0), timeout=5.0).run(attempt)


def opener(
    script: list[list[str | Exception]],
) -> tuple[list[int], Callable[[], AsyncIterator[str]]]:
    """A stream factory: each call plays the next list (strings yielded, errors raised)."""
    opened: list[int] = []

    def open_stream() -> AsyncIterator[str]:
        items = script[len(opened)]
        opened.append(1)

        async def gen() -> AsyncIterator[str]:
            for item in items:
                if isinstance(item, Exception):
                    raise item
                yield item

        return gen()

    return opened, open_stream


async def test_stream_retries_only_before_the_first_item() -> None:
    opened, open_stream = opener(
        [[ProviderConnectionError("reset")], ["a", "b", ProviderConnectionError("reset")]]
    )
    retrying = Retrying(FAST)
    received: list[str] = []
    with pytest.raises(ProviderConnectionError):
        async for item in retrying.stream(open_stream):
            received.append(item)
    assert received == ["a", "b"]  # delivered once, never restarted
    assert len(opened) == 2 and retrying.attempts == 2


async def test_stream_success_after_a_rate_limit() -> None:
    _, open_stream = opener([[RateLimitError("wait", retry_after=0.0)], ["x", "y"]])
    retrying = Retrying(FAST)
    assert [item async for item in retrying.stream(open_stream)] == ["x", "y"]
    assert retrying.attempts == 2


async def test_stream_timeout_bounds_the_first_item_only() -> None:
    async def slow_first() -> AsyncIterator[str]:
        await asyncio.Event().wait()
        yield "never"

    retrying = Retrying(RetryPolicy(max_retries=1, backoff_base=0.0), timeout=0.01)
    with pytest.raises(NeuronTimeout):
        async for _ in retrying.stream(slow_first):
            pass
    assert retrying.attempts == 2
    assert isinstance(retrying.errors[0], NeuronError)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the precise one wins
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], seconds: float | None) -> None:
    from moa.neurons.llm._litellm import retry_after_of as _retry_after

    assert _retry_after(_WithHeaders(headers)) == seconds


def test_retry_after_as_an_http_date() -> None:
    import email.utils
    import time

    from moa.neurons.llm._litellm import retry_after_of as _retry_after

    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    waited = _retry_after(_WithHeaders({"retry-after": when}))
    assert waited is not None and 25 <= waited <= 31


class _WithHeaders(Exception):
    """Shaped like an openai/litellm status error: `.response.headers`."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("status error")
        self.response = type("Response", (), {"headers": headers})()
