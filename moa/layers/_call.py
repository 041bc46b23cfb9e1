"""Call one neuron, time it, and turn an expected failure into data (never into text)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar

from moa.errors import NeuronError
from moa.neurons.base import ChatMessage, Generation, Neuron, NeuronRequest, Reference
from moa.result import NeuronResult

__all__ = ["StreamedCall", "call_neuron", "format_responses", "gather_all", "system_then"]

_T = TypeVar("_T")


def system_then(system: str | None, history: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    """A new message tuple: the system prompt (if any) followed by `history`."""
    if system:
        return ({"role": "system", "content": system}, *history)
    return tuple(history)


def format_responses(references: Sequence[Reference]) -> str:
    """Number the responses: `Response 1:\\n<text>` blocks separated by blank lines."""
    return "\n\n".join(f"Response {i}:\n{ref.text}" for i, ref in enumerate(references, 1))


async def call_neuron(
    neuron: Neuron,
    request: NeuronRequest,
    *,
    layer: str,
    index: int,
    origin: float,
    semaphore: asyncio.Semaphore | None = None,
) -> tuple[NeuronResult, Generation | None, NeuronError | None]:
    """Run `neuron.generate(request)`; a `NeuronError` is returned, anything else propagates."""
    if semaphore is not None:
        await semaphore.acquire()
    start = time.perf_counter()
    generation: Generation | None = None
    failure: NeuronError | None = None
    try:
        generation = await neuron.generate(request)
    except NeuronError as exc:
        exc.neuron = exc.neuron or neuron.path
        exc.layer = exc.layer or layer
        failure = exc
    finally:
        end = time.perf_counter()
        if semaphore is not None:
            semaphore.release()
    result = _neuron_result(neuron, layer, index, origin, start, end, generation, failure)
    return result, generation, failure


def _neuron_result(
    neuron: Neuron,
    layer: str,
    index: int,
    origin: float,
    start: float,
    end: float,
    generation: Generation | None,
    failure: NeuronError | None,
    first_token: float | None = None,
) -> NeuronResult:
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
    )


class StreamedCall:
    """`neuron.stream(request)` as text deltas; once iterated, `result`, `generation` and
    `failure` are set exactly as `call_neuron` returns them (a `NeuronError` becomes data,
    any other exception propagates). Text already yielded stays in `partial_text`."""

    def __init__(
        self, neuron: Neuron, request: NeuronRequest, *, layer: str, index: int, origin: float
    ) -> None:
        self.neuron, self.request = neuron, request
        self.layer, self.index, self.origin = layer, index, origin
        self.result: NeuronResult | None = None
        self.generation: Generation | None = None
        self.failure: NeuronError | None = None
        self.partial_text = ""

    async def __aiter__(self) -> AsyncIterator[str]:
        start = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        try:
            async for piece in self.neuron.stream(self.request):
                if isinstance(piece, Generation):
                    self.generation = piece
                    continue
                if first is None:
                    first = time.perf_counter()
                pieces.append(piece)
                yield piece
            if self.generation is None:
                raise TypeError(f"{self.neuron!r}.stream() ended without a Generation")
        except NeuronError as exc:
            exc.neuron = exc.neuron or self.neuron.path
            exc.layer = exc.layer or self.layer
            self.failure = exc
            self.generation = None
        finally:
            self.partial_text = "".join(pieces)
        self.result = _neuron_result(
            self.neuron, self.layer, self.index, self.origin, start, time.perf_counter(),
            self.generation, self.failure, first,
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
