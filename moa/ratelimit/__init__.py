"""Provider rate limits shared by every caller: in this process (default), across the
workers of a Ray job (one named actor), or across processes and replicas (Redis,
`MOA_REDIS_URL`). See `moa.ratelimit._core` for the arithmetic and the bucket key.

`shared_limiter()` is the limiter every rate-limited neuron call goes through (moa holds a
slot around each attempt, `moa.layers._call.attempt`); it is chosen once per
process: what `use_backend()` installed (a Ray batch worker installs the Ray actor unless
`MOA_REDIS_URL` is set), else Redis when `MOA_REDIS_URL` is set, else in-process.
"""

from __future__ import annotations

import os
import threading

from moa.ratelimit._core import (
    HORIZON,
    BucketState,
    LimiterBackend,
    LocalBackend,
    Permit,
    RateLimit,
    RateLimiter,
    Reservation,
    bucket_key,
    estimate_tokens,
)

__all__ = [
    "HORIZON",
    "REDIS_URL_VARIABLE",
    "BucketState",
    "LimiterBackend",
    "LocalBackend",
    "Permit",
    "RateLimit",
    "RateLimiter",
    "Reservation",
    "bucket_key",
    "estimate_tokens",
    "shared_limiter",
    "use_backend",
]

REDIS_URL_VARIABLE = "MOA_REDIS_URL"

_limiter: RateLimiter | None = None
_lock = threading.Lock()


def shared_limiter() -> RateLimiter:
    """This process's limiter (created on first use)."""
    global _limiter
    with _lock:
        if _limiter is None:
            url = os.environ.get(REDIS_URL_VARIABLE)
            if url:
                from moa.ratelimit._redis import RedisBackend

                _limiter = RateLimiter(RedisBackend(url))
            else:
                _limiter = RateLimiter(LocalBackend())
        return _limiter


def use_backend(backend: LimiterBackend | None) -> RateLimiter | None:
    """Install `backend` for this process (None: choose again on next use); returns the
    limiter it replaces."""
    global _limiter
    with _lock:
        previous = _limiter
        _limiter = RateLimiter(backend) if backend is not None else None
        return previous
