"""Applying a rate limit around one upstream call: the seam between the limiter and its one
caller, the attempt loop every neuron call goes through (`moa.layers._call.attempt`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from moa.errors import RateLimitError
from moa.ratelimit._core import Permit, RateLimit, estimate_tokens

__all__ = ["limited"]


@asynccontextmanager
async def limited(
    limit: RateLimit | None,
    key: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    max_tokens: int | None = None,
    attempt_seconds: float = 120.0,
) -> AsyncIterator[Permit | None]:
    """Wait for `key`'s bucket, then hold a slot for the call made inside the block.

    Without a `limit` this does nothing at all (no limiter is even created). A
    `RateLimitError` with a `retry_after` raised inside the block pauses the whole bucket for
    that long, for every caller sharing it. Settle tokens with `permit.settle(n)`.
    """
    if limit is None:
        yield None
        return
    from moa.ratelimit import shared_limiter

    limiter = shared_limiter()
    tokens = estimate_tokens(messages, max_tokens) if limit.tokens_per_minute else 0
    lease = attempt_seconds + 30.0  # a holder that died frees its slot after this long
    async with limiter.permit(key, limit, tokens=tokens, lease_seconds=lease) as permit:
        try:
            yield permit
        except RateLimitError as exc:
            if exc.retry_after is not None and exc.retry_after > 0:
                await limiter.pause(key, float(exc.retry_after))
            raise
