"""`LoopLocal`: one resource per running event loop, for neurons that hold a client.

A neuron outlives event loops: `process_sync()` runs each call in a fresh loop, tests run
many, a server runs one. A client bound to the loop it was made in (an aiohttp or httpx
session, a database pool) created once in `prepare()` breaks on the next loop with
`RuntimeError: Event loop is closed`. `LoopLocal` keeps one per loop instead, made on first
use in that loop and closed when that loop shuts down (`asyncio.run()` and `process_sync()`
finalise it), so a neuron needs no clean-up code for it:

    class WeatherNeuron(Neuron):
        def __init__(self, config, **kwargs):
            super().__init__(config, **kwargs)
            self.http = LoopLocal(aiohttp.ClientSession, close=lambda s: s.close())

        async def generate(self, request):
            session = await self.http.get()
            ...

        async def aclose(self):
            await self.http.aclose()    # optional: loop shutdown closes it anyway

`moa.neurons.llm` keeps its own pooled session per loop the same way.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["LoopLocal"]

T = TypeVar("T")


class LoopLocal(Generic[T]):
    """A value per running event loop: `await get()` returns this loop's, creating it with
    `factory()` (a function or coroutine function) the first time; `close(value)` (sync or
    async, optional) runs when the loop shuts down or on `aclose()`. Concurrent first calls
    in one loop share one value. Safe to use from several threads, each with its own loop.
    """

    def __init__(
        self,
        factory: Callable[[], T | Awaitable[T]],
        *,
        close: Callable[[T], object] | None = None,
    ) -> None:
        self._factory = factory
        self._close = close
        self._values: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[T, AsyncGenerator[None, None]]
        ] = weakref.WeakKeyDictionary()
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self) -> T:
        """This event loop's value, created on first use."""
        loop = asyncio.get_running_loop()
        entry = self._values.get(loop)
        if entry is not None:
            return entry[0]
        async with self._locks.setdefault(loop, asyncio.Lock()):
            entry = self._values.get(loop)
            if entry is not None:
                return entry[0]
            made = self._factory()
            value: T = await made if inspect.isawaitable(made) else made
            guard = self._close_at_shutdown(value)
            await guard.__anext__()  # now the loop's async-generator finaliser owns it
            self._values[loop] = (value, guard)
            return value

    def peek(self) -> T | None:
        """This event loop's value if it was made, else None (never creates one)."""
        entry = self._values.get(asyncio.get_running_loop())
        return entry[0] if entry is not None else None

    async def aclose(self) -> None:
        """Close this event loop's value now (the next `get()` makes a new one)."""
        entry = self._values.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[1].aclose()

    async def _close_at_shutdown(self, value: T) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if self._close is not None:
                closed = self._close(value)
                if inspect.isawaitable(closed):
                    await closed

    def __repr__(self) -> str:
        return f"<LoopLocal of {getattr(self._factory, '__qualname__', self._factory)!r}>"
