"""Bucket state in Redis (`MOA_REDIS_URL`), shared by every process and replica.

Each step is one Lua script run atomically by Redis on Redis's own clock (`TIME`): no
read-modify-write from Python, no clock skew between machines. The arithmetic is the one of
`BucketState.reserve` (see `moa.ratelimit._core`). A bucket is two Redis keys: a hash
(`moa:rl:{<bucket>}:s`: request tat, token tat, cooldown) and a sorted set of concurrency
leases by expiry (`moa:rl:{<bucket>}:l`); the hash tag keeps them on one cluster slot.
Idle buckets expire after an hour.

redis-py is imported only when this backend is used (`pip install 'moa-llm[redis]'`).
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from moa.errors import RateLimiterUnavailable
from moa.ratelimit._core import CONCURRENCY_POLL, HORIZON, RateLimit, Reservation

__all__ = ["RedisBackend"]


@asynccontextmanager
async def _redis_errors() -> AsyncIterator[None]:
    import redis.exceptions

    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise RateLimiterUnavailable(
            f"the shared rate limiter cannot use Redis (MOA_REDIS_URL): {type(exc).__name__}"
        ) from None

_PREFIX = "moa:rl:"
_IDLE_MS = 3_600_000

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

RESERVE = (
    _NOW
    + """
local request_interval = tonumber(ARGV[1])
local token_interval = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local max_concurrency = tonumber(ARGV[4])
local lease_seconds = tonumber(ARGV[5])
local horizon = tonumber(ARGV[6])
local lease = ARGV[7]
local state = redis.call('HMGET', KEYS[1], 'r', 't', 'c')
local request_tat = tonumber(state[1]) or 0
local token_tat = tonumber(state[2]) or 0
local start = math.max(now, tonumber(state[3]) or 0)
if request_interval > 0 then start = math.max(start, request_tat) end
if token_interval > 0 then start = math.max(start, token_tat) end
if start - now > horizon then
  return {0, string.format('%.6f', start - now - horizon)}
end
if max_concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= max_concurrency then
    return {0, ARGV[8]}
  end
  redis.call('ZADD', KEYS[2], now + lease_seconds, lease)
  redis.call('PEXPIRE', KEYS[2], math.floor(lease_seconds * 1000) + 1000)
end
if request_interval > 0 then
  redis.call('HSET', KEYS[1], 'r', string.format('%.6f', start + request_interval))
end
if token_interval > 0 then
  redis.call('HSET', KEYS[1], 't', string.format('%.6f', start + tokens * token_interval))
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[9]))
return {1, string.format('%.6f', start - now)}
"""
)

SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBYFLOAT', KEYS[1], 't', ARGV[1])
end
return 1
"""

PAUSE = (
    _NOW
    + """
local until_ = now + tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'c')) or 0
if until_ > current then
  redis.call('HSET', KEYS[1], 'c', string.format('%.6f', until_))
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
)


def _keys(bucket: str) -> list[str]:
    return [f"{_PREFIX}{{{bucket}}}:s", f"{_PREFIX}{{{bucket}}}:l"]


class RedisBackend:
    """Bucket state in Redis at `url`. One client per event loop (redis-py's asyncio client
    belongs to the loop that made it)."""

    name = "redis"

    def __init__(self, url: str) -> None:
        import redis.asyncio  # noqa: F401  (fail now, with the install hint, not mid-batch)

        self.url = url
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:  # the URL may hold a password: never show it
        return "<RedisBackend>"

    def _scripts(self) -> Any:
        loop = asyncio.get_running_loop()
        scripts = self._clients.get(loop)
        if scripts is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(self.url)
            scripts = (
                client,
                client.register_script(RESERVE),
                client.register_script(SETTLE),
                client.register_script(PAUSE),
            )
            self._clients[loop] = scripts
        return scripts

    async def reserve(
        self, key: str, limit: RateLimit, tokens: int, lease_seconds: float
    ) -> Reservation:
        _, reserve, _, _ = self._scripts()
        request_interval, token_interval = limit.intervals()
        lease = uuid.uuid4().hex if limit.max_concurrency is not None else ""
        async with _redis_errors():
            granted, delay = await reserve(
                keys=_keys(key),
                args=[
                    request_interval,
                    token_interval,
                    tokens,
                    limit.max_concurrency or 0,
                    lease_seconds,
                    HORIZON,
                    lease,
                    CONCURRENCY_POLL,
                    _IDLE_MS,
                ],
            )
        return Reservation(bool(granted), float(delay), lease if granted and lease else None)

    async def settle(self, key: str, limit: RateLimit, tokens: int) -> None:
        _, _, settle, _ = self._scripts()
        _, token_interval = limit.intervals()
        if token_interval:
            async with _redis_errors():
                await settle(keys=_keys(key)[:1], args=[f"{tokens * token_interval:.6f}"])

    async def release(self, key: str, lease: str) -> None:
        client = self._scripts()[0]
        async with _redis_errors():
            await client.zrem(_keys(key)[1], lease)

    async def pause(self, key: str, seconds: float) -> None:
        _, _, _, pause = self._scripts()
        async with _redis_errors():
            await pause(keys=_keys(key)[:1], args=[seconds, _IDLE_MS])

    async def aclose(self) -> None:
        """Close this loop's connection pool."""
        scripts = self._clients.pop(asyncio.get_running_loop(), None)
        if scripts is not None:
            await scripts[0].aclose()
