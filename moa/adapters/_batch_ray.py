"""`moa batch --backend ray`: the same rows as the local backend, computed by a pool of Ray
actors, written by the driver alone.

Each actor builds the mixture once and runs the queries it is handed with asyncio, at most
`concurrency` at a time. The driver hands out chunks, keeps two per actor in flight, and
writes each returned row to the sink unless its id was already written. So every id is
written once even when a worker process dies: Ray restarts the actor and runs its unfinished
chunks again (`max_restarts=-1`, `max_task_retries=-1`); the upstream calls of those chunks
are made again, their rows are not written twice. A rerun skips what the sink already holds.

Workers share provider rate limits through Redis when `MOA_REDIS_URL` is set, else through
the named limiter actor (`moa.ratelimit._ray`). Ray is imported only here
(`pip install 'moa-llm[ray]'`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import SecretStr

from moa.adapters.batch import BatchInputError, BatchItem, BatchSummary, _key, plan_batch, run_item
from moa.config import MoAConfig
from moa.ratelimit import REDIS_URL_VARIABLE
from moa.settings import Settings

__all__ = ["key_variables", "run_batch_ray"]

_IN_FLIGHT_PER_ACTOR = 2
_MAX_CHUNK_ATTEMPTS = 3


class _BatchWorker:
    """One Ray actor: a mixture and an event loop running the queries it is handed."""

    def __init__(
        self,
        config: MoAConfig,
        settings: Settings,
        secrets: dict[str, SecretStr],
        concurrency: int,
        limiter: Any,
    ) -> None:
        for name, value in secrets.items():
            os.environ.setdefault(name, value.get_secret_value())
        if limiter is not None:
            from moa.ratelimit import use_backend
            from moa.ratelimit._ray import RayActorBackend

            use_backend(RayActorBackend(limiter))
        from moa.mixture import MixtureOfAgents

        self.moa = MixtureOfAgents(config, settings=settings)
        self.concurrency = concurrency
        self._semaphore: asyncio.Semaphore | None = None

    def pid(self) -> int:
        return os.getpid()

    async def run(self, items: list[BatchItem]) -> list[dict[str, Any]]:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.concurrency)
        semaphore = self._semaphore

        async def one(item: BatchItem) -> dict[str, Any]:
            async with semaphore:
                return await run_item(self.moa.process, item)

        return list(await asyncio.gather(*(one(item) for item in items)))


def key_variables(config: MoAConfig, settings: Settings) -> dict[str, SecretStr]:
    """The API keys the workers need (`api_key_env` of any neuron, `PROVIDER_API_KEY`), as
    SecretStr so that no Ray repr or log shows them."""
    names = {"PROVIDER_API_KEY"}
    pending: list[Any] = [config.model_dump()]
    while pending:  # every `api_key_env` anywhere in the tree
        node = pending.pop()
        if isinstance(node, dict):
            if isinstance(node.get("api_key_env"), str):
                names.add(node["api_key_env"])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    found = {}
    for name in sorted(names):
        value = settings.secret(name)
        if value:
            found[name] = SecretStr(value)
    return found


def _start_ray(address: str | None, actors: int) -> bool:
    """Connect to `address`, or start a local Ray on 127.0.0.1. True if Ray was started here."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report over the network
    if not address:
        # Read by Ray at import: a local Ray then binds and advertises 127.0.0.1 only,
        # instead of every interface.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise BatchInputError("--backend ray needs Ray: pip install 'moa-llm[ray]'") from None
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=max(actors, os.cpu_count() or 1),
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
        )
    return True


def run_batch_ray(
    config: MoAConfig,
    settings: Settings,
    items: Sequence[BatchItem],
    sink: Any,
    *,
    actors: int = 2,
    concurrency: int = 8,
    address: str | None = None,
    max_cost: float | None = None,
    chunk_size: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_item: Callable[[dict[str, Any]], None] | None = None,
    on_workers: Callable[[list[Any]], None] | None = None,
) -> BatchSummary:
    """Run every item not yet in `sink` on `actors` Ray actors; see the module docstring."""
    if actors < 1 or concurrency < 1:
        raise BatchInputError("--actors and --concurrency must be at least 1")
    todo, summary, written = plan_batch(items, sink, on_start)
    if not todo:
        return summary
    sink.open()
    started_ray = _start_ray(address, actors)
    import ray

    limiter = None
    if not os.environ.get(REDIS_URL_VARIABLE):
        from moa.ratelimit._ray import limiter_actor

        limiter = limiter_actor()
    secrets = key_variables(config, settings)
    if os.environ.get(REDIS_URL_VARIABLE):
        secrets[REDIS_URL_VARIABLE] = SecretStr(os.environ[REDIS_URL_VARIABLE])
    worker_class: Any = ray.remote(max_restarts=-1, max_task_retries=-1)(_BatchWorker)
    # Put once and held here until the end: a restarted actor reads its arguments again.
    setup = [ray.put(config), ray.put(settings), ray.put(secrets)]
    workers: list[Any] = [worker_class.remote(*setup, concurrency, limiter) for _ in range(actors)]
    try:
        if on_workers is not None:
            on_workers(workers)
        size = chunk_size or concurrency
        chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
        chunks.reverse()  # popped from the end: input order
        pending: dict[Any, tuple[int, list[BatchItem], int]] = {}  # ref -> worker, chunk, tries
        load = [0] * actors
        summary.rows_per_worker = [0] * actors

        def submit(worker: int, chunk: list[BatchItem], tries: int) -> None:
            ref = workers[worker].run.remote(chunk)
            pending[ref] = (worker, chunk, tries)
            load[worker] += 1

        def fill() -> None:
            for worker in range(actors):
                while load[worker] < _IN_FLIGHT_PER_ACTOR and chunks:
                    if max_cost is not None and summary.cost >= max_cost:
                        summary.stopped_by_cost = True
                        chunks.clear()
                        return
                    submit(worker, chunks.pop(), 1)

        fill()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            worker, chunk, tries = pending.pop(ref)
            load[worker] -= 1
            try:
                records = ray.get(ref)
            except ray.exceptions.RayActorError:
                if tries >= _MAX_CHUNK_ATTEMPTS:
                    raise
                submit((worker + 1) % actors, chunk, tries + 1)
                continue
            for record in records:
                key = _key(record["id"])
                if key in written:
                    continue  # a retried chunk's row that is already out
                written.add(key)
                summary.rows_per_worker[worker] += 1
                sink.write(record)
                summary.record(record)
                if on_item is not None:
                    on_item(record)
            sink.checkpoint()
            fill()
    finally:
        sink.close()
        for worker_handle in workers:
            ray.kill(worker_handle)
        if started_ray:
            ray.shutdown()
    return summary
