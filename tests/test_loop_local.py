"""`moa.LoopLocal`: one value per event loop, closed when its loop shuts down."""

from __future__ import annotations

import asyncio
import threading

from moa import LoopLocal


class Client:
    made = 0

    def __init__(self) -> None:
        Client.made += 1
        self.closed = False
        self.loop = asyncio.get_running_loop()

    async def close(self) -> None:
        self.closed = True


def test_one_value_per_loop_closed_when_the_loop_ends() -> None:
    local: LoopLocal[Client] = LoopLocal(Client, close=Client.close)

    async def use() -> Client:
        first, second = await asyncio.gather(local.get(), local.get())  # concurrent first use
        assert first is second and first.loop is asyncio.get_running_loop()
        assert local.peek() is first
        return first

    before = Client.made
    one = asyncio.run(use())
    two = asyncio.run(use())  # a second asyncio.run(), as a second process_sync() does
    assert one is not two and Client.made == before + 2
    assert one.closed and two.closed


def test_aclose_and_an_async_factory_and_sync_close() -> None:
    closed: list[str] = []

    async def make() -> str:
        await asyncio.sleep(0)
        return "session"

    local: LoopLocal[str] = LoopLocal(make, close=closed.append)

    async def main() -> None:
        assert local.peek() is None
        assert await local.get() == "session"
        await local.aclose()
        assert closed == ["session"] and local.peek() is None
        assert await local.get() == "session"  # a new one after aclose()

    asyncio.run(main())
    assert closed == ["session", "session"]


def test_threads_with_their_own_loops_get_their_own_values() -> None:
    local: LoopLocal[Client] = LoopLocal(Client)
    seen: list[Client] = []

    def worker() -> None:
        seen.append(asyncio.run(local.get()))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(c) for c in seen}) == 3
