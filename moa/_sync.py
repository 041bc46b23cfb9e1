"""The one bridge from synchronous code to moa's async API (`process_sync`, the litellm
provider's `completion` and `streaming`).

Without a running event loop in the caller's thread, the coroutine runs on a new loop right
there (`moa._runner.run`: Ctrl-C cancels it at once). With one (a notebook, an async
framework calling sync code), it runs on its own loop in a worker thread.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from moa._runner import executor, run

__all__ = ["iterate_sync", "run_sync"]

_T = TypeVar("_T")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_sync(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """The result of the coroutine `make()` makes, whether or not a loop is running here."""
    if not _loop_running():
        return run(make())
    return executor().submit(run, make()).result()


def iterate_sync(make: Callable[[], AsyncIterator[_T]]) -> Iterator[_T]:
    """The items of the async iterator `make()` makes, for synchronous code: it runs on its
    own event loop in a worker thread, and its errors are raised in the caller's thread."""
    inbox: queue.Queue[tuple[str, Any]] = queue.Queue()

    async def pump() -> None:
        try:
            async for item in make():
                inbox.put(("item", item))
        except BaseException as exc:  # handed to the caller's thread
            inbox.put(("error", exc))
        else:
            inbox.put(("done", None))

    executor().submit(run, pump())
    while True:
        kind, value = inbox.get()
        if kind == "error":
            raise value
        if kind == "done":
            return
        yield value
