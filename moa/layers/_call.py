"""Call one neuron, time it, and turn an expected failure into data (never into text).

This is the one call site of every neuron (annotator, proposal layers, aggregator), so the
timeout, retry policy and fallbacks apply the same way to every neuron type.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from functools import partial
from typing import Any, TypeVar

from moa.errors import NeuronError
from moa.errors import TimeoutError as NeuronTimeout
from moa.neurons.base import ChatMessage, Generation, Neuron, NeuronRequest, Reference
from moa.result import NeuronResult
from moa.retry import Retrying

__all__ = [
    "CallState",
    "RequestFor",
    "StreamedCall",
    "call_neuron",
    "cut_off",
    "format_responses",
    "gather_all",
    "gather_until",
    "system_then",
]

_T = TypeVar("_T")


def system_then(system: str | None, history: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    """A new message tuple: the system prompt (if any) followed by `history`."""
    if system:
        return ({"role": "system", "content": system}, *history)
    return tuple(history)


def format_responses(references: Sequence[Reference]) -> str:
    """Number the responses: `Response 1:\\n<text>` blocks separated by blank lines."""
    return "\n\n".join(f"Response {i}:\n{ref.text}" for i, ref in enumerate(references, 1))


class CallState:
    """What is known of one neuron call while it runs: when it started, the attempts made and
    why they failed. A layer reads it to record a straggler its deadline cut off."""

    __slots__ = ("_current", "_done_attempts", "errors", "start")

    def __init__(self) -> None:
        self.start: float | None = None
        self.errors: list[NeuronError] = []
        self._done_attempts = 0
        self._current: Retrying | None = None

    @property
    def attempts(self) -> int:
        running = self._current.attempts if self._current is not None else 0
        return self._done_attempts + running


RequestFor = Callable[[Neuron], NeuronRequest]
"""Builds the request for a neuron or one of its fallbacks (whose prompt may differ)."""


async def call_neuron(
    neuron: Neuron,
    request: NeuronRequest | RequestFor,
    *,
    layer: str,
    index: int,
    origin: float,
    semaphore: asyncio.Semaphore | None = None,
    state: CallState | None = None,
) -> tuple[NeuronResult, Generation | None, NeuronError | None]:
    """Run `neuron.generate(request)` under its retry policy and timeout, then its fallbacks.

    `request` may be a function of the neuron, so each fallback gets its own system prompt.
    A `NeuronError` (the last one, when every fallback failed too) is returned; anything else
    propagates.
    """
    state = state if state is not None else CallState()
    if semaphore is not None:
        await semaphore.acquire()
    start = state.start = time.perf_counter()
    generation: Generation | None = None
    failure: NeuronError | None = None
    answered_by: Neuron = neuron
    try:
        for candidate in (neuron, *neuron.fallbacks):
            retrying = state._current = Retrying(
                candidate.retry_policy,
                candidate.timeout,
                on_error=partial(_stamp, neuron=candidate, layer=layer, index=index),
            )
            try:
                ask = request(candidate) if callable(request) else request
                generation = await retrying.run(partial(candidate.generate, ask))
            except NeuronError as exc:
                failure = exc
                continue
            finally:
                state.errors.extend(retrying.errors)
                state._done_attempts += retrying.attempts
                state._current = None
            answered_by, failure = candidate, None
            break
    finally:
        end = time.perf_counter()
        if semaphore is not None:
            semaphore.release()
    result = _neuron_result(
        neuron, state, layer=layer, index=index, origin=origin, start=start, end=end,
        generation=generation, failure=failure, answered_by=answered_by,
    )  # fmt: skip
    return result, generation, failure


def _neuron_result(
    neuron: Neuron,
    state: CallState,
    *,
    layer: str,
    index: int,
    origin: float,
    start: float,
    end: float,
    generation: Generation | None,
    failure: NeuronError | None,
    answered_by: Neuron,
    first_token: float | None = None,
    timed_out: bool = False,
) -> NeuronResult:
    """The trace entry of a call: finished (streamed or not), or cut off by a deadline."""
    if failure is not None:
        failure.attempts = state.attempts
    return NeuronResult(
        path=neuron.path,
        layer=layer,
        index=index,
        model=neuron.label,
        weight=neuron.weight,
        text=generation.text if generation is not None else None,
        error=str(failure) if failure is not None else None,
        error_type=type(failure).__name__ if failure is not None else None,
        status_code=failure.status_code if failure is not None else None,
        seconds=end - start,
        start=start - origin,
        end=end - origin,
        usage=generation.usage if generation is not None else None,
        cost=generation.cost if generation is not None else None,
        time_to_first_token=first_token - start if first_token is not None else None,
        queued_seconds=_queued_seconds(generation),
        attempts=state.attempts,
        attempt_errors=tuple(str(e) for e in state.errors),
        fallback=answered_by.label if answered_by is not neuron else None,
        timed_out=timed_out,
    )


def _queued_seconds(generation: Generation | None) -> float | None:
    """What a neuron reported of its wait for a shared model (`extra['queued_seconds']`)."""
    value = generation.extra.get("queued_seconds") if generation is not None else None
    return float(value) if isinstance(value, int | float) else None


class StreamedCall:
    """`neuron.stream(request)` as text deltas, under the same timeout, retry policy and
    fallbacks as `call_neuron`: an attempt is retried, and the next fallback tried, only
    until the first delta has been yielded; after that a failure ends the call (a partly
    delivered answer is never silently restarted or mixed with another model's).

    Once iterated, `result`, `generation` and `failure` are set as `call_neuron` returns
    them (a `NeuronError` becomes data, anything else propagates); the text already yielded
    stays in `partial_text`.
    """

    def __init__(
        self,
        neuron: Neuron,
        request: NeuronRequest | RequestFor,
        *,
        layer: str,
        index: int,
        origin: float,
    ) -> None:
        self.neuron, self.request = neuron, request
        self.layer, self.index, self.origin = layer, index, origin
        self.result: NeuronResult | None = None
        self.generation: Generation | None = None
        self.failure: NeuronError | None = None
        self.partial_text = ""

    async def __aiter__(self) -> AsyncIterator[str]:
        state = CallState()
        start = state.start = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        answered_by: Neuron = self.neuron
        try:
            for candidate in (self.neuron, *self.neuron.fallbacks):
                retrying = state._current = Retrying(
                    candidate.retry_policy,
                    candidate.timeout,
                    on_error=partial(_stamp, neuron=candidate, layer=self.layer, index=self.index),
                )
                ask = self.request(candidate) if callable(self.request) else self.request
                try:
                    async for piece in retrying.stream(partial(candidate.stream, ask)):
                        if isinstance(piece, Generation):
                            self.generation = piece
                            continue
                        if first is None:
                            first = time.perf_counter()
                        pieces.append(piece)
                        yield piece
                    if self.generation is None:
                        raise TypeError(f"{candidate!r}.stream() ended without a Generation")
                except NeuronError as exc:
                    _stamp(exc, neuron=candidate, layer=self.layer, index=self.index)
                    self.failure, self.generation = exc, None
                    if pieces:
                        break  # text was delivered: no fallback may continue it
                    continue
                finally:
                    state.errors.extend(retrying.errors)
                    state._done_attempts += retrying.attempts
                    state._current = None
                answered_by, self.failure = candidate, None
                break
        finally:
            self.partial_text = "".join(pieces)
        self.result = _neuron_result(
            self.neuron, state, layer=self.layer, index=self.index, origin=self.origin,
            start=start, end=time.perf_counter(), generation=self.generation,
            failure=self.failure, answered_by=answered_by, first_token=first,
        )  # fmt: skip


def _stamp(error: NeuronError, *, neuron: Neuron, layer: str, index: int) -> None:
    """Fill in where an error happened, keeping what the neuron itself said."""
    error.neuron = error.neuron or neuron.path
    error.model = error.model or neuron.label
    error.layer = error.layer or layer
    error.index = index if error.index is None else error.index


def cut_off(
    neuron: Neuron, state: CallState, *, layer: str, index: int, origin: float, deadline: float
) -> NeuronResult:
    """The trace entry of a straggler that a layer deadline cancelled."""
    now = time.perf_counter()
    failure = NeuronTimeout(
        f"cut off by the layer deadline of {deadline:g} s",
        neuron=neuron.path,
        model=neuron.label,
        layer=layer,
        index=index,
    )
    return _neuron_result(
        neuron, state, layer=layer, index=index, origin=origin,
        start=state.start if state.start is not None else now, end=now,
        generation=None, failure=failure, answered_by=neuron, timed_out=True,
    )  # fmt: skip


async def gather_all(calls: Sequence[Coroutine[Any, Any, _T]]) -> list[_T]:
    """Run coroutines concurrently and return their results in order.

    If one raises (a bug, or cancellation), the others are cancelled and that exception
    propagates as itself rather than wrapped in an ExceptionGroup.
    """
    if len(calls) == 1:
        return [await calls[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except BaseExceptionGroup as group_error:
        first = group_error.exceptions[0]
        raise first from first.__cause__
    return [task.result() for task in tasks]


async def gather_until(
    calls: Sequence[Coroutine[Any, Any, _T]],
    *,
    deadline: float,
    quorum: int,
    succeeded: Callable[[_T], bool],
) -> list[_T | None]:
    """Run coroutines concurrently; once `deadline` seconds have passed and at least `quorum`
    results satisfy `succeeded`, cancel the rest. Results in order, None for a cancelled one.

    Before returning (or raising), every cancelled call has finished unwinding, so its
    upstream request is closed and nothing is left running.
    """
    loop = asyncio.get_running_loop()
    cutoff = loop.time() + deadline
    tasks = [asyncio.ensure_future(call) for call in calls]
    pending: set[asyncio.Future[_T]] = set(tasks)
    successes = 0
    try:
        while pending:
            remaining = cutoff - loop.time()
            if remaining <= 0 and successes >= quorum:
                break
            done, pending = await asyncio.wait(
                pending,
                timeout=remaining if remaining > 0 else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            bug: BaseException | None = None
            for task in done:
                if task.exception() is not None:
                    bug = bug or task.exception()
                elif succeeded(task.result()):
                    successes += 1
            if bug is not None:
                raise bug
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    return [
        task.result() if task.done() and not task.cancelled() and not task.exception() else None
        for task in tasks
    ]
