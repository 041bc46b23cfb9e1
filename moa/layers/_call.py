"""Call one neuron, time it, and turn an expected failure into data (never into text).

This is the one call site of every neuron (annotator, proposal layers, aggregator). The
mixture builds one frozen `CallPlan` per neuron (per-attempt timeout, retry policy,
fallbacks, shared rate limit); `attempts()` is the one attempt loop that applies it, to
plain calls (`call_neuron`) and streamed ones (`StreamedCall`) alike, and `attempt()` is the
one place where a single attempt reaches a neuron: anything that must happen around every
upstream call (the shared rate limiter, `limited_generate`) goes there, once, whatever the
neuron type.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from moa import tracing
from moa.errors import NeuronError
from moa.errors import TimeoutError as NeuronTimeout
from moa.neurons.base import Generation, Neuron, NeuronRequest
from moa.ratelimit import Permit, RateLimit
from moa.ratelimit._call import limited
from moa.result import NeuronResult
from moa.retry import Retrying, RetryPolicy, StreamLimits, _aclose

__all__ = [
    "CallPlan",
    "CallState",
    "RequestFor",
    "StreamedCall",
    "attempt",
    "attempts",
    "call_neuron",
    "cut_off",
    "gather_all",
    "gather_until",
    "limited_generate",
]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class CallPlan:
    """How one neuron is called, decided once by the mixture: each attempt is bounded by
    `timeout` seconds (and the neuron finds it in `NeuronRequest.timeout`), a started stream
    also by `stream_limits`, retryable failures are retried under `retry`, and when the
    neuron fails for good its `fallbacks` (each with its own plan, without fallbacks of its
    own) are tried in order. With a `rate_limit`, each attempt first waits for a slot of the
    shared bucket named `bucket` (the neuron's `Neuron.bucket`; None: not limited)."""

    neuron: Neuron
    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    stream_limits: StreamLimits = field(default_factory=StreamLimits)
    fallbacks: tuple[CallPlan, ...] = ()
    rate_limit: RateLimit | None = None
    bucket: str | None = None

    @property
    def candidates(self) -> tuple[CallPlan, ...]:
        """The neuron's plan, then its fallbacks', in the order they are tried."""
        return (self, *self.fallbacks)


class CallState:
    """What is known of one neuron call while it runs: when it started, the attempts made and
    why they failed, and which candidate answered. A layer reads it to record a straggler
    its deadline cut off."""

    __slots__ = ("_current", "_done_attempts", "answered_by", "errors", "start")

    def __init__(self) -> None:
        self.start: float | None = None
        self.errors: list[NeuronError] = []
        self.answered_by: Neuron | None = None
        self._done_attempts = 0
        self._current: Retrying | None = None

    @property
    def attempts(self) -> int:
        running = self._current.attempts if self._current is not None else 0
        return self._done_attempts + running


RequestFor = Callable[[Neuron], NeuronRequest]
"""Builds the request for a neuron or one of its fallbacks (whose prompt may differ)."""


def _secrets(neuron: Neuron) -> Callable[[], list[str | None]]:
    """The values of the keys `neuron` declares, read only when a network error needs them
    redacted (`Retrying` words those errors itself)."""
    return lambda: [neuron.settings.secret(name) for name in neuron.required_secrets()]


async def attempt(
    plan: CallPlan, request: NeuronRequest, *, stream: bool
) -> AsyncIterator[str | Generation]:
    """One attempt: one call of `plan.neuron` (one upstream request) under the plan's rate
    limit, yielding its text deltas (`stream`) and then its `Generation`. Every attempt of
    every neuron goes through here; `attempts()` bounds it by the plan's timeout (the wait
    for a slot included) and decides what comes next."""
    if not stream:
        yield await limited_generate(plan, request)
        return
    generation: Generation | None = None
    async with _limited(plan, request, stream=True) as permit:  # held for the whole stream
        pieces = plan.neuron.stream(request)
        try:
            async for piece in pieces:
                if isinstance(piece, Generation):
                    generation = piece
                    continue
                yield piece
        finally:
            await _aclose(pieces)  # a stream given up on ends upstream before its slot frees
        await _settle(permit, generation)
    if generation is not None:
        yield generation


async def limited_generate(plan: CallPlan, request: NeuronRequest) -> Generation:
    """`plan.neuron.generate(request)` holding a slot of the plan's rate-limit bucket (for a
    wrapper neuron that calls the neuron it wraps only sometimes, e.g. on a cache miss)."""
    async with _limited(plan, request, stream=False) as permit:
        generation = await plan.neuron.generate(request)
        await _settle(permit, generation)
    return generation


def _limited(
    plan: CallPlan, request: NeuronRequest, *, stream: bool
) -> AbstractAsyncContextManager[Permit | None]:
    """A slot of the plan's bucket for one attempt (nothing without a limit). Its tokens are
    estimated from the messages and the neuron's `max_tokens` option, if it has one; its
    lease (how long a slot of a caller that died stays taken) follows the attempt's timeout,
    or the stream's total limit."""
    if plan.rate_limit is None or plan.bucket is None:
        return nullcontext()
    max_tokens = getattr(plan.neuron.config, "max_tokens", None)
    seconds = request.timeout or plan.neuron.settings.request_timeout
    if stream:
        seconds = max(seconds, plan.stream_limits.total)
    return limited(
        plan.rate_limit,
        plan.bucket,
        request.messages,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        attempt_seconds=seconds,
    )


async def _settle(permit: Permit | None, generation: Generation | None) -> None:
    """Settle the tokens charged up front with the count the neuron reported."""
    if permit is not None and generation is not None and generation.usage is not None:
        await permit.settle(generation.usage.prompt_tokens + generation.usage.completion_tokens)


async def attempts(
    plan: CallPlan,
    request: NeuronRequest | RequestFor,
    *,
    stream: bool,
    state: CallState,
    layer: str,
    index: int,
) -> AsyncIterator[str | Generation]:
    """The attempt loop of every neuron call, plain or streamed.

    Tries each candidate (the neuron, then its fallbacks in order) under its own retry
    policy, each attempt bounded by its timeout (until its first item, for a stream). Yields
    text deltas (streams only), then exactly one `Generation`. A failure is retried, and the
    next fallback tried, only until text has been yielded: after that it ends the call (a
    partly delivered answer is never silently restarted or mixed with another model's).
    When every candidate failed, the last `NeuronError` is raised; anything that is not a
    `NeuronError` propagates at once. `state` records the attempts as they happen.
    """
    failure: NeuronError | None = None
    delivered = False
    scope = tracing.current()  # the layer being traced, if tracing is on
    for candidate in plan.candidates:
        ask = request(candidate.neuron) if callable(request) else request
        ask = dataclasses.replace(ask, timeout=candidate.timeout)
        stamp = partial(_stamp, neuron=candidate.neuron, layer=layer, index=index)
        # One span per candidate model, covering all its attempts (see moa.tracing).
        span = scope.call(candidate.neuron, plan.neuron) if scope is not None else tracing.NO_CALL
        retrying = state._current = Retrying(
            candidate.retry,
            candidate.timeout,
            on_error=_traced(stamp, span),
            stream_limits=candidate.stream_limits,
            secrets=_secrets(candidate.neuron),
        )
        generation: Generation | None = None
        with span:
            span.request(ask)
            try:
                async for piece in retrying.stream(partial(attempt, candidate, ask, stream=stream)):
                    if isinstance(piece, Generation):
                        generation = piece
                        continue
                    delivered = True
                    yield piece
                if generation is None:
                    raise TypeError(f"{candidate.neuron!r}.stream() ended without a Generation")
            except NeuronError as exc:
                stamp(exc)
                span.gave_up(exc, retrying.attempts)
                failure = exc
                if delivered:
                    raise  # text was delivered: no fallback may continue it
                continue
            finally:
                state.errors.extend(retrying.errors)
                state._done_attempts += retrying.attempts
                state._current = None
            span.answered(generation, retrying.attempts)
        state.answered_by = candidate.neuron
        yield generation
        return
    assert failure is not None
    raise failure


async def call_neuron(
    plan: CallPlan,
    request: NeuronRequest | RequestFor,
    *,
    layer: str,
    index: int,
    origin: float,
    semaphore: asyncio.Semaphore | None = None,
    state: CallState | None = None,
) -> tuple[NeuronResult, Generation | None, NeuronError | None]:
    """Call the neuron of `plan` (with its retries and fallbacks) and return its trace
    entry, its answer, and the `NeuronError` that ended it (the last one, when every
    fallback failed too) instead of raising it; anything else propagates.

    `request` may be a function of the neuron, so each fallback gets its own system prompt.
    """
    state = state if state is not None else CallState()
    if semaphore is not None:
        await semaphore.acquire()
    start = state.start = time.perf_counter()
    generation: Generation | None = None
    failure: NeuronError | None = None
    try:
        async for piece in attempts(
            plan, request, stream=False, state=state, layer=layer, index=index
        ):
            if isinstance(piece, Generation):
                generation = piece
    except NeuronError as exc:
        failure = exc
    finally:
        end = time.perf_counter()
        if semaphore is not None:
            semaphore.release()
    result = _neuron_result(
        plan.neuron, state, layer=layer, index=index, origin=origin, start=start, end=end,
        generation=generation, failure=failure,
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
    first_token: float | None = None,
    timed_out: bool = False,
) -> NeuronResult:
    """The trace entry of a call: finished (streamed or not), or cut off by a deadline."""
    if failure is not None:
        failure.attempts = state.attempts
    answered_by = state.answered_by if generation is not None else None
    fallback = answered_by.label if answered_by is not None and answered_by is not neuron else None
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
        fallback=fallback,
        timed_out=timed_out,
    )


def _queued_seconds(generation: Generation | None) -> float | None:
    """What a neuron reported of its wait for a shared model (`extra['queued_seconds']`)."""
    value = generation.extra.get("queued_seconds") if generation is not None else None
    return float(value) if isinstance(value, int | float) else None


class StreamedCall:
    """The neuron of `plan` streamed (`neuron.stream(request)`) as text deltas, through the
    same attempt loop as `call_neuron`.

    Once iterated, `result`, `generation` and `failure` are set as `call_neuron` returns
    them (a `NeuronError` becomes data, anything else propagates); the text already yielded
    stays in `partial_text`.
    """

    def __init__(
        self,
        plan: CallPlan,
        request: NeuronRequest | RequestFor,
        *,
        layer: str,
        index: int,
        origin: float,
    ) -> None:
        self.plan, self.request = plan, request
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
        try:
            async for piece in attempts(
                self.plan, self.request, stream=True, state=state, layer=self.layer,
                index=self.index,
            ):  # fmt: skip
                if isinstance(piece, Generation):
                    self.generation = piece
                    continue
                if first is None:
                    first = time.perf_counter()
                pieces.append(piece)
                yield piece
        except NeuronError as exc:
            self.failure, self.generation = exc, None
        finally:
            self.partial_text = "".join(pieces)
        self.result = _neuron_result(
            self.plan.neuron, state, layer=self.layer, index=self.index, origin=self.origin,
            start=start, end=time.perf_counter(), generation=self.generation,
            failure=self.failure, first_token=first,
        )  # fmt: skip


def _traced(
    stamp: Callable[[NeuronError], None], span: tracing.CallTrace
) -> Callable[[NeuronError], None]:
    """What `Retrying` does with each failed attempt: stamp it, then (when traced) record
    it on the model's span."""
    if span is tracing.NO_CALL:
        return stamp
    failed = 0

    def on_error(error: NeuronError) -> None:
        nonlocal failed
        failed += 1
        stamp(error)
        span.attempt_failed(error, failed)

    return on_error


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
        generation=None, failure=failure, timed_out=True,
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
