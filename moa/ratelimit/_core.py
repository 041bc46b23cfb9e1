"""Shared provider rate limits: the limit, the bucket arithmetic, and the caller's side.

A `RateLimit` (`requests_per_minute`, `tokens_per_minute`, `max_concurrency`) applies to one
*bucket key*: the provider endpoint, the model and a fingerprint of the API key (see
`bucket_key`), so every neuron, fallback, process and replica that calls the same model with
the same key draws from the same bucket.

The arithmetic is a token bucket in its "virtual scheduling" form (GCRA): a bucket keeps the
time at which it is next free (`tat`). A call reserves a start time `start = max(now, tat of
each bucket, cooldown)` and moves each bucket's `tat` to `start + cost * interval`, where the
interval is `60 / requests_per_minute` for a call and `60 / tokens_per_minute` per token. So
calls are spaced evenly (1200 requests a minute lets one call start every 50 ms) and nothing
bursts. Tokens are charged up front with an estimate (`estimate_tokens`) and settled with the
provider's count after the call.

A call may reserve at most `HORIZON` seconds ahead; further out it is told how long to wait
and asks again, so a `Retry-After` (`pause`) holds back everyone who has not reserved yet:
at most `HORIZON` seconds of already-reserved calls still go out after a 429.

The same state machine (`BucketState.reserve`) runs in-process and inside the named Ray
actor; the Redis backend runs the same arithmetic in one Lua script. The backends hold no
limits, only state: each call carries its `RateLimit`.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "HORIZON",
    "BucketState",
    "LimiterBackend",
    "LocalBackend",
    "Permit",
    "RateLimit",
    "RateLimiter",
    "Reservation",
    "bucket_key",
    "estimate_tokens",
]

HORIZON = 0.5
"""Seconds ahead a call may reserve its start; beyond that it waits and asks again."""

LATE = 0.02
"""Seconds past its reserved start after which a woken caller reserves again (see `permit`)."""

LATE_RETRIES = 3
"""How often one call may reserve again for waking late before it goes anyway."""

CONCURRENCY_POLL = 0.02
"""Seconds a call waits before asking again when `max_concurrency` calls are in flight."""


class RateLimit(BaseModel):
    """Limits of one provider bucket (provider endpoint + model + API key). Unset: no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    requests_per_minute: float | None = Field(
        default=None, gt=0, description="Calls started per minute, spaced evenly."
    )
    tokens_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="Prompt + completion tokens per minute (estimated before a call, "
        "settled with the provider's count after it).",
    )
    max_concurrency: int | None = Field(
        default=None, ge=1, description="Calls in flight at once, across every worker."
    )

    @property
    def active(self) -> bool:
        return (
            self.requests_per_minute is not None
            or self.tokens_per_minute is not None
            or self.max_concurrency is not None
        )

    def intervals(self) -> tuple[float, float]:
        """Seconds per request and per token (0: unlimited)."""
        rpm, tpm = self.requests_per_minute, self.tokens_per_minute
        return (60.0 / rpm if rpm else 0.0, 60.0 / tpm if tpm else 0.0)


def bucket_key(provider: str, model: str, api_key: str | None) -> str:
    """`provider|model|key fingerprint`: the key itself never leaves this function (the
    fingerprint is the first 12 hex digits of its SHA-256; `-` without a key)."""
    fingerprint = hashlib.sha256(api_key.encode()).hexdigest()[:12] if api_key else "-"
    return f"{provider}|{model}|{fingerprint}"


def estimate_tokens(messages: Sequence[Mapping[str, Any]], max_tokens: int | None = None) -> int:
    """A cheap upper-ish estimate of a call's tokens before it is made: ~4 characters a
    token plus a few per message, plus `max_tokens` when the completion is capped."""
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return chars // 4 + 4 * len(messages) + (max_tokens or 0) + 1


@dataclass(frozen=True, slots=True)
class Reservation:
    """A backend's answer: granted (start after `delay` seconds) or ask again after `delay`."""

    granted: bool
    delay: float
    lease: str | None = None


@dataclass(slots=True)
class BucketState:
    """One bucket's state and the reservation arithmetic (times in seconds of `now`)."""

    request_tat: float = 0.0
    token_tat: float = 0.0
    cooldown_until: float = 0.0
    leases: dict[str, float] = field(default_factory=dict)  # lease id -> expiry

    def reserve(
        self,
        now: float,
        limit: RateLimit,
        tokens: int,
        lease_seconds: float,
        horizon: float = HORIZON,
    ) -> Reservation:
        request_interval, token_interval = limit.intervals()
        start = max(now, self.cooldown_until)
        if request_interval:
            start = max(start, self.request_tat)
        if token_interval:
            start = max(start, self.token_tat)
        if start - now > horizon:
            return Reservation(False, start - now - horizon)
        lease = None
        if limit.max_concurrency is not None:
            for held, expiry in list(self.leases.items()):
                if expiry <= now:  # its holder died without releasing it
                    del self.leases[held]
            if len(self.leases) >= limit.max_concurrency:
                return Reservation(False, CONCURRENCY_POLL)
            lease = uuid.uuid4().hex
            self.leases[lease] = now + lease_seconds
        if request_interval:
            self.request_tat = start + request_interval
        if token_interval:
            self.token_tat = start + tokens * token_interval
        return Reservation(True, start - now, lease)

    def settle(self, limit: RateLimit, tokens: int) -> None:
        """Charge (or refund, if negative) `tokens` against the token bucket."""
        _, token_interval = limit.intervals()
        if token_interval:
            self.token_tat += tokens * token_interval

    def release(self, lease: str) -> None:
        self.leases.pop(lease, None)

    def pause(self, now: float, seconds: float) -> None:
        self.cooldown_until = max(self.cooldown_until, now + seconds)


class LimiterBackend(Protocol):
    """Where bucket state lives. Each method is one atomic step on one bucket."""

    name: str

    async def reserve(
        self, key: str, limit: RateLimit, tokens: int, lease_seconds: float
    ) -> Reservation: ...

    async def settle(self, key: str, limit: RateLimit, tokens: int) -> None: ...

    async def release(self, key: str, lease: str) -> None: ...

    async def pause(self, key: str, seconds: float) -> None: ...


class LocalBackend:
    """Bucket state in this process (the default): shared by every mixture in it."""

    name = "local"

    def __init__(self) -> None:
        self.buckets: dict[str, BucketState] = {}

    def _bucket(self, key: str) -> BucketState:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = BucketState()
        return bucket

    async def reserve(
        self, key: str, limit: RateLimit, tokens: int, lease_seconds: float
    ) -> Reservation:
        return self._bucket(key).reserve(time.monotonic(), limit, tokens, lease_seconds)

    async def settle(self, key: str, limit: RateLimit, tokens: int) -> None:
        self._bucket(key).settle(limit, tokens)

    async def release(self, key: str, lease: str) -> None:
        self._bucket(key).release(lease)

    async def pause(self, key: str, seconds: float) -> None:
        self._bucket(key).pause(time.monotonic(), seconds)


@dataclass(slots=True)
class Permit:
    """Leave to make one upstream call; `settle(actual_tokens)` once the provider counted."""

    limiter: RateLimiter
    key: str
    limit: RateLimit
    estimate: int
    lease: str | None
    waited: float
    settled: bool = False

    async def settle(self, actual_tokens: int) -> None:
        if self.limit.tokens_per_minute is not None and not self.settled:
            self.settled = True
            delta = actual_tokens - self.estimate
            if delta:
                await self.limiter.backend.settle(self.key, self.limit, delta)


class RateLimiter:
    """The caller's side: waits for a reservation, sleeps until its start, releases after."""

    def __init__(self, backend: LimiterBackend) -> None:
        self.backend = backend

    @asynccontextmanager
    async def permit(
        self,
        key: str,
        limit: RateLimit,
        *,
        tokens: int = 0,
        lease_seconds: float = 600.0,
    ) -> AsyncIterator[Permit]:
        """Hold a slot of `key`'s bucket for the duration of one upstream call.

        A caller that wakes more than `LATE` seconds after its reserved start (its process or
        event loop was stalled) gives the slot up and reserves again, up to `LATE_RETRIES`
        times: calls due during a stall go out spaced, not all at once when it ends."""
        started = time.monotonic()
        spaced = any(limit.intervals())
        late_retries = 0
        while True:
            while True:
                answer = await self.backend.reserve(key, limit, tokens, lease_seconds)
                if answer.granted:
                    break
                # Many callers get the same hint: spread their next asks a little.
                await asyncio.sleep(answer.delay + random.uniform(0.0, 0.01))
            due = time.monotonic() + answer.delay  # never earlier than the backend's start
            try:
                if answer.delay > 0:
                    await asyncio.sleep(answer.delay)
            except BaseException:
                if answer.lease is not None:
                    await asyncio.shield(self.backend.release(key, answer.lease))
                raise
            if not spaced or late_retries >= LATE_RETRIES or time.monotonic() - due <= LATE:
                break
            late_retries += 1
            if answer.lease is not None:
                await asyncio.shield(self.backend.release(key, answer.lease))
        permit = Permit(self, key, limit, tokens, answer.lease, time.monotonic() - started)
        try:
            yield permit
        finally:
            if answer.lease is not None:
                await asyncio.shield(self.backend.release(key, answer.lease))

    async def pause(self, key: str, seconds: float) -> None:
        """Hold every caller of `key` back for `seconds` (a provider's Retry-After)."""
        await self.backend.pause(key, seconds)
