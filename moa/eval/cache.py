"""The on-disk call cache of `moa eval`, and the neuron wrapper that uses it.

Every neuron call of an evaluated system goes through a `CachedNeuron`: the key is the
neuron's type and options (its label and weight aside), the messages and references it was
given, and its sample index (its rank among identical neurons of its layer, so Self-MoA's N
samples of one model are N different calls). A hit returns the stored answer, usage and cost
without calling anything; a miss calls the neuron and stores the answer. Re-scoring, adding a
system or rerunning after a crash therefore never calls the same thing twice, and a system
that shares calls with another (a single and the mixture's first layer; vote and Self-MoA's
samples) reuses them.

Each call's seconds (as measured when it really ran) go to the per-item ledger, so latency
figures stay true when answers come from the cache. Failures are not cached.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from moa.layers._call import CallPlan, limited_generate
from moa.mixture import MixtureOfAgents
from moa.neurons.base import Generation, Neuron, NeuronRequest, Tokenizer, TokenLimits
from moa.result import Usage

__all__ = ["CallCache", "CallRecord", "CachedNeuron", "instrument", "ledger"]

_IDENTITY_EXCLUDE = {"name", "weight", "fallbacks", "timeout", "max_retries"}


@dataclass(frozen=True)
class CallRecord:
    """One call made for an item: its seconds when it really ran (without `queue` seconds
    spent waiting for a shared local model, when the neuron reports them as
    `Generation.extra["queue_seconds"]`), and whether it came from the cache."""

    seconds: float
    cached: bool
    queue: float = 0.0


_LEDGER: contextvars.ContextVar[dict[str, CallRecord] | None] = contextvars.ContextVar(
    "moa_eval_ledger", default=None
)


@contextmanager
def ledger() -> Iterator[dict[str, CallRecord]]:
    """Collect the calls made inside the block (in this task and the tasks it starts), by
    neuron path."""
    calls: dict[str, CallRecord] = {}
    token = _LEDGER.set(calls)
    try:
        yield calls
    finally:
        _LEDGER.reset(token)


class CallCache:
    """A sqlite table of answers keyed by call. `path=None` keeps nothing (`--no-cache`)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            db.execute(
                "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, generation TEXT NOT "
                "NULL, seconds REAL NOT NULL, created REAL NOT NULL)"
            )
            self._db = db

    @staticmethod
    def key(neuron: Neuron, request: NeuronRequest, sample: int) -> str:
        identity = neuron.config.model_dump(mode="json", exclude=_IDENTITY_EXCLUDE)
        payload = {
            "neuron": identity,
            "messages": [dict(m) for m in request.messages],
            "references": [[r.text, r.weight] for r in request.references],
            "sample": sample,
        }
        raw = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()

    def get(self, key: str) -> tuple[Generation, float] | None:
        if self._db is None:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT generation, seconds FROM calls WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        data = json.loads(row[0])
        usage = data.get("usage")
        generation = Generation(
            text=data["text"],
            usage=Usage(**usage) if usage is not None else None,
            cost=data.get("cost"),
            model=data.get("model"),
            extra=data.get("extra") or {},
        )
        return generation, float(row[1])

    def put(self, key: str, generation: Generation, seconds: float) -> None:
        if self._db is None:
            return
        data = {
            "text": generation.text,
            "usage": generation.usage.model_dump() if generation.usage is not None else None,
            "cost": generation.cost,
            "model": generation.model,
            "extra": dict(generation.extra),
        }
        raw = json.dumps(data, ensure_ascii=False, default=str)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?)", (key, raw, seconds, time.time())
            )

    def count(self) -> int:
        if self._db is None:
            return 0
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class CachedNeuron(Neuron):
    """Wraps a built neuron: answers from the cache, else calls it (preparing it on the first
    miss only, so a fully cached run loads no model) and stores the answer. A miss holds a
    slot of the rate-limit bucket of `plan` (the inner neuron's plan), a hit none."""

    def __init__(
        self, inner: Neuron, cache: CallCache, sample: int, *, plan: CallPlan | None = None
    ) -> None:
        super().__init__(inner.config)
        self.bind(settings=inner.settings, path=inner.path)
        self.inner = inner
        self.plan = plan if plan is not None else CallPlan(inner)
        self.cache = cache
        self.sample = sample
        self._prepared = False
        self._prepare_lock: asyncio.Lock | None = None

    async def _prepare_inner(self) -> None:
        if self._prepared:
            return
        if self._prepare_lock is None:
            self._prepare_lock = asyncio.Lock()
        async with self._prepare_lock:
            if not self._prepared:
                await self.inner.prepare()
                self._prepared = True

    async def generate(self, request: NeuronRequest) -> Generation:
        key = self.cache.key(self.inner, request, self.sample)
        calls = _LEDGER.get()
        found = self.cache.get(key)
        if found is not None:
            self.cache.hits += 1
            generation, seconds = found
            if calls is not None:
                calls[self.path] = CallRecord(seconds, True, _queue(generation))
            return generation
        await self._prepare_inner()
        started = time.perf_counter()
        generation = await limited_generate(self.plan, request)
        seconds = time.perf_counter() - started
        self.cache.misses += 1
        self.cache.put(key, generation, seconds)
        if calls is not None:
            calls[self.path] = CallRecord(seconds, False, _queue(generation))
        return generation

    @property
    def bucket(self) -> str | None:
        return None  # a hit calls nothing; a miss is limited by the inner neuron's plan

    def tokenizer(self) -> Tokenizer | None:
        return self.inner.tokenizer()

    def token_limits(self) -> TokenLimits:
        return self.inner.token_limits()

    async def aclose(self) -> None:
        await self.inner.aclose()


def _queue(generation: Generation) -> float:
    queue = generation.extra.get("queue_seconds")
    return float(queue) if isinstance(queue, (int, float)) else 0.0


def _samples(neurons: tuple[Neuron, ...]) -> list[int]:
    """Each neuron's rank among the identical neurons (same options) before it."""
    seen: dict[str, int] = {}
    ranks = []
    for neuron in neurons:
        identity = json.dumps(
            neuron.config.model_dump(mode="json", exclude=_IDENTITY_EXCLUDE),
            sort_keys=True,
            default=str,
        )
        ranks.append(seen.get(identity, 0))
        seen[identity] = ranks[-1] + 1
    return ranks


def _cached(plan: CallPlan, cache: CallCache, sample: int) -> CallPlan:
    """The plan with its neuron and its fallbacks' neurons answering through `cache`."""
    return dataclasses.replace(
        plan,
        neuron=CachedNeuron(plan.neuron, cache, sample, plan=plan),
        fallbacks=tuple(_cached(f, cache, sample) for f in plan.fallbacks),
        rate_limit=None,  # the cached neuron holds a slot only on a miss
        bucket=None,
    )


def instrument(moa: MixtureOfAgents, cache: CallCache) -> MixtureOfAgents:
    """Route every neuron call of `moa` through `cache` (in place; returns `moa`). The `vote`
    aggregator calls no model and is left alone."""
    if moa.annotator is not None:
        moa.annotator.plan = _cached(moa.annotator.plan, cache, 0)
    for layer in moa.layers:
        ranks = _samples(layer.neurons)
        layer.plans = tuple(
            _cached(plan, cache, rank) for plan, rank in zip(layer.plans, ranks, strict=True)
        )
    if moa.aggregation.neuron.config.type != "vote":
        moa.aggregation.plan = _cached(moa.aggregation.plan, cache, 0)
    return moa
