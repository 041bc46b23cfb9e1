"""Bucket state in one named Ray actor, shared by every worker of a Ray job.

The actor runs `BucketState` (the in-process arithmetic) on its own clock; Ray runs one
method call at a time on it, so each step is atomic. Workers find it by name
(`ACTOR_NAME` in namespace `moa`), and the first to ask creates it. Ray is imported only
when this backend is used (`pip install 'moa-llm[ray]'`).
"""

from __future__ import annotations

import time
from typing import Any

from moa.ratelimit._core import BucketState, RateLimit, Reservation

__all__ = ["ACTOR_NAME", "NAMESPACE", "RayActorBackend", "limiter_actor"]

ACTOR_NAME = "moa-rate-limiter"
NAMESPACE = "moa"


class _Buckets:
    """The actor's body: bucket state keyed by bucket key."""

    def __init__(self) -> None:
        self.buckets: dict[str, BucketState] = {}

    def _bucket(self, key: str) -> BucketState:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = BucketState()
        return bucket

    def reserve(
        self, key: str, limit: RateLimit, tokens: int, lease_seconds: float
    ) -> tuple[bool, float, str | None]:
        answer = self._bucket(key).reserve(time.monotonic(), limit, tokens, lease_seconds)
        return answer.granted, answer.delay, answer.lease

    def settle(self, key: str, limit: RateLimit, tokens: int) -> None:
        self._bucket(key).settle(limit, tokens)

    def release(self, key: str, lease: str) -> None:
        self._bucket(key).release(lease)

    def pause(self, key: str, seconds: float) -> None:
        self._bucket(key).pause(time.monotonic(), seconds)


_handles: dict[str, Any] = {}  # job id -> handle: kept, so the actor outlives one batch


def limiter_actor() -> Any:
    """The named limiter actor of the connected Ray cluster, created on first use. It lives
    as long as the driver job that created it (a handle is kept for the job's lifetime),
    and restarts if its process dies (bucket state restarts empty: at worst one horizon of
    calls goes unthrottled)."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    handle = _handles.get(job)
    if handle is None:
        remote: Any = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(_Buckets)
        handle = _handles[job] = remote.options(
            name=ACTOR_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime=None
        ).remote()
    return handle


class RayActorBackend:
    """Bucket state in the named Ray actor (see `limiter_actor`)."""

    name = "ray"

    def __init__(self, actor: Any | None = None) -> None:
        self.actor = actor if actor is not None else limiter_actor()

    async def reserve(
        self, key: str, limit: RateLimit, tokens: int, lease_seconds: float
    ) -> Reservation:
        granted, delay, lease = await self.actor.reserve.remote(key, limit, tokens, lease_seconds)
        return Reservation(bool(granted), float(delay), lease)

    async def settle(self, key: str, limit: RateLimit, tokens: int) -> None:
        await self.actor.settle.remote(key, limit, tokens)

    async def release(self, key: str, lease: str) -> None:
        await self.actor.release.remote(key, lease)

    async def pause(self, key: str, seconds: float) -> None:
        await self.actor.pause.remote(key, seconds)
