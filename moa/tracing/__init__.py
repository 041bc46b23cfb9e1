"""OpenTelemetry spans for every run and every model call (extra: `pip install 'moa-llm[otel]'`).

moa emits spans through `opentelemetry-api` when it is installed and `MOA_TRACING` is not
`off`; where your application (or `moa run`/`batch`/`serve`, see `moa.tracing.setup`)
installed an SDK, they are exported, else they cost next to nothing. Without the package
nothing is imported: `import moa` never imports OpenTelemetry, and with tracing off a run
does not either. One trace per `process()` / `stream()`::

    invoke_agent moa                         INTERNAL, parent: the caller's active span
    ├── moa.layer annotator                  INTERNAL
    │   └── chat {model}                     CLIENT
    ├── moa.layer proposal_layers[0]         INTERNAL: index, survivors, dropped, cut references
    │   ├── chat {model}                     one span per model tried, covering its attempts
    │   │     event moa.attempt.failed        one per failed attempt (retried or not)
    │   ├── chat {model}                     the neuron's own model failed for good...
    │   └── chat {fallback model}            ...so its fallback answered (moa.fallback = true)
    └── moa.layer aggregation_layer          INTERNAL: what the aggregator was shown
        └── chat {model}

Retries are events on the model's `chat` span (as the GenAI conventions ask, a call's span
covers its retries); each fallback tried is a span of its own, since it is another model.
Tokens (`gen_ai.usage.*`) are on the `chat` spans that answered and, summed, on the root.
Prompt and answer text are recorded only with `MOA_TRACE_CONTENT=true`, as a
`gen_ai.client.inference.operation.details` event on each `chat` span.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Self, TypeVar

if TYPE_CHECKING:
    from types import TracebackType

    from moa.errors import NeuronError
    from moa.layers.aggregation import Aggregation
    from moa.mixture import MixtureOfAgents
    from moa.neurons.base import Generation, Neuron, NeuronRequest, Reference
    from moa.result import LayerResult, MoAResult
    from moa.settings import Settings

__all__ = [
    "NO_CALL",
    "NO_LAYER",
    "NO_RUN",
    "CallTrace",
    "LayerTrace",
    "RunTrace",
    "continuing",
    "current",
    "reset",
    "start_run",
    "traced_run",
    "tracing_enabled",
]

_T = TypeVar("_T")

_ACTIVE: ContextVar[LayerTrace | None] = ContextVar("moa_active_layer_trace", default=None)


def current() -> LayerTrace | None:
    """The layer whose calls are being traced in this context, or None (tracing off)."""
    return _ACTIVE.get()


class _Span:
    """A span used as a context manager; leaving it with an exception records the failure
    (the no-op base records nothing)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class CallTrace(_Span):
    """The span of one model tried for one call (no-op base; see `moa.tracing._otel`).

    Use as a context manager around the model's attempts: leaving it with an exception
    records the failure (a `NeuronError`, a cancellation, a bug)."""

    def request(self, request: NeuronRequest) -> None:
        """What is sent (recorded only when content capture is on)."""

    def attempt_failed(self, error: NeuronError, attempt: int) -> None:
        """Attempt number `attempt` (from 1) failed with `error`; it may be retried."""

    def answered(self, generation: Generation, attempts: int) -> None:
        """The model answered after `attempts` attempts."""

    def gave_up(self, error: NeuronError, attempts: int) -> None:
        """The model failed for good after `attempts` attempts."""


class LayerTrace(_Span):
    """The span of one layer (annotator, a proposal layer, the aggregation); no-op base."""

    def call(self, neuron: Neuron, primary: Neuron) -> CallTrace:
        """A span for `neuron` (the call's own neuron, or one of `primary`'s fallbacks)."""
        return NO_CALL

    def proposals(self, result: LayerResult) -> None:
        """What the proposal layer passed on."""

    def aggregation(self, aggregation: Aggregation, offered: tuple[Reference, ...]) -> None:
        """What the aggregator was shown of the answers `offered` to it."""

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make calls started in this block children of this layer. Only around code
        without `yield` (tasks created inside keep it)."""
        yield

    def iterate(self, stream: AsyncIterator[_T]) -> AsyncIterator[_T]:
        """`stream` with this layer active while each of its items is produced."""
        return stream


class RunTrace:
    """The root span of one `process()` / `stream()`; no-op base."""

    def layer(self, name: str, index: int | None) -> LayerTrace:
        return NO_LAYER

    def finish(self, result: MoAResult) -> None:
        """The run answered."""

    def fail(self, error: BaseException) -> None:
        """The run failed (or was cancelled)."""

    def end(self) -> None:
        """Close the root span."""


NO_CALL = CallTrace()
NO_LAYER = LayerTrace()
NO_RUN = RunTrace()


def start_run(mixture: MixtureOfAgents, *, stream: bool) -> RunTrace:
    """Open the root span of a run of `mixture` (its parent: the caller's active span), or
    return the no-op `NO_RUN` when tracing is off or OpenTelemetry is not installed."""
    tracing = _tracing(mixture.settings.tracing, mixture.settings.trace_content)
    if tracing is None:
        return NO_RUN
    run: RunTrace = tracing.run(mixture, stream=stream)
    return run


async def traced_run(run: RunTrace, events: AsyncIterator[_T]) -> AsyncIterator[_T]:
    """`events` of a run, closing `run` with its result or its failure."""
    from moa.events import Completed

    try:
        async for event in events:
            if isinstance(event, Completed):
                run.finish(event.result)
            yield event
    except BaseException as exc:
        run.fail(exc)
        raise
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
        run.end()


def reset() -> None:
    """Forget which tracing backend was found (tests that install or hide OpenTelemetry)."""
    _tracing.cache_clear()


@functools.cache
def _tracing(mode: str, capture_content: bool) -> Any:
    if mode == "off":
        return None
    try:
        from moa.tracing._otel import OtelTracing
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        if mode == "on":
            from moa.errors import ConfigError

            raise ConfigError(
                "MOA_TRACING=on needs OpenTelemetry: pip install 'moa-llm[otel]' "
                "(allowed values of MOA_TRACING: auto, on, off)"
            ) from None
        return None
    return OtelTracing(capture_content=capture_content)


def tracing_enabled(settings: Settings) -> bool:
    """Whether runs with `settings` emit spans (imports OpenTelemetry if it is installed)."""
    return _tracing(settings.tracing, settings.trace_content) is not None


def continuing(headers: Mapping[str, str], settings: Settings) -> contextvars.Context | None:
    """A copy of the current context in which the W3C `traceparent` (and `tracestate`) of
    incoming HTTP `headers` is the active span, so that a run started in it continues the
    caller's trace; None when tracing is off or there is no `traceparent`."""
    if "traceparent" not in headers or not tracing_enabled(settings):
        return None
    from moa.tracing._otel import attach_remote_parent

    context = contextvars.copy_context()
    context.run(attach_remote_parent, headers)  # never detached: the copy is thrown away
    return context
