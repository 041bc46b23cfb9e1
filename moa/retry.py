"""The retry policy: one for every provider and every neuron type.

What is retried is decided here and nowhere else (litellm and the openai SDK are called with
their own retries turned off, so there is exactly one retry layer):

- retried: `RateLimitError` (429), `TimeoutError` (no answer in time, or 408),
  `ProviderConnectionError` (refused, reset, dropped before an answer), and any other
  `ProviderError` whose status is 409 or 5xx;
- never retried: 400 / 401 / 403 / 404 / 422, `AuthenticationError`, `InvalidResponseError`
  (a 2xx with unusable content), and anything that is not a `NeuronError` (a bug propagates).

The wait before retry *n* (0-based) is `min(backoff_base * 2**n, backoff_max)`, less up to
`jitter` of it at random (the openai-python shape). A `Retry-After` / `retry-after-ms` sent
with a retryable failure (429, 503...) is honoured instead when it is at most
`max_retry_after`; a longer one ends the retries at once, so a fallback model (if any) takes
over instead of waiting.

`Retrying` runs attempts under a policy and counts them. It serves plain calls (`run`) and
streams (`stream`): a stream is retried only until it has produced its first item, never
after. A started stream is bounded too (`StreamLimits`): by the wait for each next item
(idle) and by the whole attempt (total), so an upstream that keeps a connection alive
without sending content cannot hold a call open.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from moa.errors import (
    AuthenticationError,
    InvalidResponseError,
    NeuronError,
    ProviderConnectionError,
    RateLimitError,
)
from moa.errors import TimeoutError as NeuronTimeout

__all__ = [
    "NEVER_RETRIED_STATUS",
    "RETRYABLE_STATUS",
    "RetryPolicy",
    "Retrying",
    "StreamLimits",
    "is_retryable",
]

logger = logging.getLogger("moa")

_T = TypeVar("_T")

RETRYABLE_STATUS = frozenset({408, 409, 429})
"""Statuses below 500 that are worth another attempt (every 5xx is too)."""

NEVER_RETRIED_STATUS = frozenset({400, 401, 403, 404, 422})
"""Statuses that will fail the same way every time."""


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt of the same call may succeed where `error` failed."""
    if not isinstance(error, NeuronError):
        return False
    if isinstance(error, (AuthenticationError, InvalidResponseError)):
        return False
    status = error.status_code
    if status in NEVER_RETRIED_STATUS:
        return False
    if isinstance(error, (RateLimitError, NeuronTimeout, ProviderConnectionError)):
        return True
    return status is not None and (status in RETRYABLE_STATUS or 500 <= status <= 599)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry a failed call.

    `max_retries` counts retries, not attempts (2 means up to 3 requests). Delays are in
    seconds; `jitter` is the largest fraction of a backoff removed at random (0 disables it).
    """

    max_retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    jitter: float = 0.25
    max_retry_after: float = 30.0

    def delay(
        self, retry: int, error: BaseException, rand: Callable[[], float] = random.random
    ) -> float | None:
        """Seconds to wait before retry number `retry` (0-based) after `error`, or None when
        the call should not be retried (not retryable, out of retries, Retry-After too long).
        """
        if retry >= self.max_retries or not is_retryable(error):
            return None
        retry_after = error.retry_after if isinstance(error, NeuronError) else None
        if isinstance(retry_after, (int, float)) and retry_after >= 0:
            return float(retry_after) if retry_after <= self.max_retry_after else None
        backoff = min(self.backoff_base * 2.0**retry, self.backoff_max)
        return backoff * (1.0 - self.jitter * rand())


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """How long a streamed attempt may take once started: `idle` seconds at most between one
    item (a content delta) and the next, `total` seconds at most for the whole attempt."""

    idle: float = 60.0
    total: float = 600.0


class Retrying:
    """Runs the attempts of one call under `policy`, each bounded by `timeout` seconds.

    `attempts` and `errors` (each failed attempt, oldest first) stay readable afterwards,
    even when the caller was cancelled half-way. An attempt that overruns `timeout` is
    cancelled and counts as a `moa.errors.TimeoutError`. `on_error` sees each failure first.
    """

    __slots__ = ("attempts", "errors", "on_error", "policy", "stream_limits", "timeout")

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float | None = None,
        *,
        on_error: Callable[[NeuronError], None] | None = None,
        stream_limits: StreamLimits | None = None,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.stream_limits = stream_limits if stream_limits is not None else StreamLimits()
        self.on_error = on_error  # e.g. to stamp the neuron's path on an error before it is logged
        self.attempts = 0
        self.errors: list[NeuronError] = []

    async def run(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """Await `attempt()` until it succeeds or the policy gives up (its last error raised)."""
        while True:
            self.attempts += 1
            try:
                return await self._bounded(attempt)
            except NeuronError as error:
                await self._before_retry(error)

    async def stream(self, open_stream: Callable[[], AsyncIterator[_T]]) -> AsyncIterator[_T]:
        """Yield the items of `open_stream()`, retrying only until the first item arrives.

        The timeout bounds the wait for the first item, `stream_limits.idle` the wait for each
        next one and `stream_limits.total` the whole attempt (a `moa.errors.TimeoutError` when
        one runs out). Once an item has been yielded, a failure propagates untouched: a partly
        delivered answer is never silently restarted.
        """
        loop = asyncio.get_running_loop()
        limits = self.stream_limits
        while True:
            self.attempts += 1
            iterator = open_stream()
            ends = loop.time() + limits.total
            try:
                first = await self._next(iterator, self.timeout, None, ends)
            except StopAsyncIteration:
                return
            except NeuronError as error:
                await _aclose(iterator)
                await self._before_retry(error)
                continue
            except BaseException:
                await _aclose(iterator)
                raise
            break
        idle = f"no new content for {limits.idle:g} s (stream_idle_timeout)"
        try:
            yield first
            while True:
                try:
                    item = await self._next(iterator, limits.idle, idle, ends)
                except StopAsyncIteration:
                    return
                yield item
        finally:
            await _aclose(iterator)

    async def _next(
        self, iterator: AsyncIterator[_T], wait: float | None, reason: str | None, ends: float
    ) -> _T:
        """The next item, waiting `wait` seconds at most (failing with `reason`) and never
        past `ends` (the loop's clock) for the whole attempt."""
        left = max(0.0, ends - asyncio.get_running_loop().time())
        if wait is None or left < wait:
            total = self.stream_limits.total
            wait, reason = left, f"the stream took longer than {total:g} s (stream_timeout)"
        return await self._bounded(partial(anext, iterator), wait, reason)

    async def _bounded(
        self,
        attempt: Callable[[], Awaitable[_T]],
        limit: float | None = None,
        reason: str | None = None,
    ) -> _T:
        """`attempt()` within `limit` seconds (default: the timeout), else a TimeoutError
        saying `reason` (default: no answer within the timeout)."""
        limit = self.timeout if limit is None else limit
        if limit is None:
            return await attempt()
        scope = asyncio.timeout(limit)
        try:
            async with scope:
                return await attempt()
        except TimeoutError as exc:  # the builtin, raised by the scope (or by the attempt)
            if not scope.expired() or isinstance(exc, NeuronError):
                raise
        # Raised outside the except block: no __context__ chain into the cancelled call's
        # frames (whose locals may hold request details).
        raise NeuronTimeout(reason or f"no answer within {limit:g} s")

    async def _before_retry(self, error: NeuronError) -> None:
        """Record `error`; sleep before the next attempt, or raise `error` if there is none."""
        if self.on_error is not None:
            self.on_error(error)
        self.errors.append(error)
        error.attempts = self.attempts
        wait = self.policy.delay(self.attempts - 1, error)
        if wait is None:
            raise error
        logger.info(
            "retrying after %s (attempt %d of %d) in %.2f s",
            error,
            self.attempts,
            self.policy.max_retries + 1,
            wait,
        )
        await asyncio.sleep(wait)


async def _aclose(iterator: AsyncIterator[object]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()
