"""Running moa from synchronous code so that Ctrl-C (and SIGTERM for the CLI) ends it at once.

`asyncio.run()` ends by waiting for its default executor: a worker thread still importing
litellm, loading a tokenizer or a model, or running a user's blocking function holds Ctrl-C
hostage for as long as that takes (for ever, if it never ends). So moa's blocking work runs
in `DaemonExecutor` threads (`to_thread()`), which nothing waits for: a run that is cancelled
abandons them, and they never keep the interpreter alive. `run()` also makes that executor the
loop's default, so a plugin's `asyncio.to_thread()` is covered too.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

__all__ = ["DaemonExecutor", "Terminated", "executor", "run", "to_thread"]

_T = TypeVar("_T")
_P = ParamSpec("_P")


class Terminated(KeyboardInterrupt):
    """SIGTERM ended the run; handled like Ctrl-C (exit status 143 instead of 130)."""

    exit_code = 143


class _Job:
    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(self, future: Future[Any], fn: Callable[..., Any], args: Any, kwargs: Any):
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


class DaemonExecutor(ThreadPoolExecutor):
    """A thread pool whose threads are daemons and whose `shutdown()` never waits.

    Like `ThreadPoolExecutor`: at most `max_workers` threads, started on demand and reused;
    a thread idle for `idle_timeout` seconds ends. Unlike it, nothing joins the threads (not
    `asyncio.run()`, not the interpreter at exit), so a job that never ends delays nothing.
    (A subclass only because an event loop's default executor must be one; none of
    `ThreadPoolExecutor`'s own machinery runs.)
    """

    def __init__(self, max_workers: int | None = None, *, idle_timeout: float = 60.0) -> None:
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self.idle_timeout = idle_timeout
        self._jobs: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._started = 0  # started and not ended
        self._waiting = 0  # of which waiting for a job

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()
        with self._ready:
            self._jobs.append(_Job(future, fn, args, kwargs))
            if len(self._jobs) > self._waiting and self._started < self.max_workers:
                self._started += 1
                name = f"moa-worker-{self._started}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
            self._ready.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._ready:
                self._waiting += 1
                while not self._jobs:
                    if not self._ready.wait(self.idle_timeout) and not self._jobs:
                        self._waiting -= 1
                        self._started -= 1
                        return
                self._waiting -= 1
                job = self._jobs.popleft()
            job.run()
            del job  # drop the result before waiting again

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to do: the threads are shared and never waited for."""


_executor: DaemonExecutor | None = None
_executor_lock = threading.Lock()


def executor() -> DaemonExecutor:
    """The process-wide `DaemonExecutor`."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = DaemonExecutor()
        return _executor


async def to_thread(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """`asyncio.to_thread` on a daemon thread: cancelling the caller abandons the work."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await loop.run_in_executor(executor(), call)


def run(main: Coroutine[Any, Any, _T], *, sigterm: bool = False) -> _T:
    """`asyncio.run(main)` that ends as soon as `main` is cancelled: Ctrl-C cancels it and
    raises `KeyboardInterrupt` (a second Ctrl-C raises it at once); with `sigterm` (from the
    main thread), SIGTERM cancels it and raises `Terminated`. Worker threads still busy are
    abandoned, never waited for.

    The signals are handled by the event loop (`loop.add_signal_handler`), not by the
    Python-level handler `asyncio.Runner` installs for SIGINT: the kernel may deliver a signal
    to any thread, and when it picks a worker thread, a Python-level handler runs only once the
    main thread next wakes up, which an idle loop waiting on a hung upstream never does. The
    loop's handlers are woken through its self-pipe whichever thread the signal lands on.
    A SIGINT handler the caller installed is left alone.
    """
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        loop.set_default_executor(executor())
        if threading.current_thread() is not threading.main_thread():
            return runner.run(main)
        handled = [signal.SIGTERM] if sigterm else []
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            handled.append(signal.SIGINT)
        if not handled:
            return runner.run(main)
        return _run_with_signals(runner, main, handled)


def _run_with_signals(
    runner: asyncio.Runner, main: Coroutine[Any, Any, _T], handled: list[signal.Signals]
) -> _T:
    loop = runner.get_loop()
    task: list[asyncio.Task[Any] | None] = [None]
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if signum == signal.SIGINT and received.count(signal.SIGINT) > 1:
            raise KeyboardInterrupt  # the second Ctrl-C: stop waiting for the cancellation
        if task[0] is not None and not task[0].done():
            task[0].cancel()

    async def cancellable() -> _T:
        task[0] = asyncio.current_task()
        if received:  # a signal came before this task started
            main.close()
            raise asyncio.CancelledError
        return await main

    # Restored after: the loop takes them over, and resets them to the defaults when done.
    before = {signum: signal.getsignal(signum) for signum in handled}
    wakeup_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_fd)
    for signum in handled:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return runner.run(cancellable())
    except asyncio.CancelledError:
        if not received:
            raise
        if received[0] == signal.SIGTERM:
            raise Terminated() from None
        raise KeyboardInterrupt() from None
    finally:
        for signum, handler in before.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, handler)
        signal.set_wakeup_fd(wakeup_fd)
