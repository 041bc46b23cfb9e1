"""The OpenTelemetry side of `moa.tracing`: imported only when tracing is on and
`opentelemetry-api` is installed. Spans are built with explicit parents (never by attaching
a context inside an async generator, which may be resumed from another task); a context is
attached only around code that does not yield."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from moa.tracing import _ACTIVE, NO_RUN, CallTrace, LayerTrace, RunTrace
from moa.tracing import _semconv as sc

if TYPE_CHECKING:
    from moa.errors import NeuronError
    from moa.layers.aggregation import Aggregation
    from moa.mixture import MixtureOfAgents
    from moa.neurons.base import Generation, Neuron, NeuronRequest, Reference
    from moa.result import LayerResult, MoAResult

__all__ = ["OtelTracing", "attach_remote_parent"]

_T = TypeVar("_T")

try:
    _VERSION: str | None = version("moa-llm")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    _VERSION = None


def _error_type(error: BaseException) -> str:
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"
    return type(error).__name__


def _fail(span: Span, error: BaseException) -> None:
    kind = _error_type(error)
    span.set_attribute(sc.ERROR_TYPE, kind)
    # The description is the error class, never the message: messages are moa's redacted
    # text, but a span is the wrong place to find out whether a provider echoed a secret.
    span.set_status(Status(StatusCode.ERROR, kind))


def attach_remote_parent(headers: Mapping[str, str]) -> None:
    """Attach the context propagated in `headers` (W3C trace context by default)."""
    from opentelemetry import context, propagate

    context.attach(propagate.extract(headers))


class OtelTracing:
    """Builds the spans of runs; one per (settings) kind, shared by every mixture."""

    def __init__(self, *, capture_content: bool) -> None:
        self.tracer = trace.get_tracer("moa", _VERSION)
        self.capture_content = capture_content

    def run(self, mixture: MixtureOfAgents, *, stream: bool) -> RunTrace:
        name = getattr(mixture, "name", "moa")
        span = self.tracer.start_span(f"{sc.INVOKE_AGENT} {name}", kind=SpanKind.INTERNAL)
        if not span.is_recording():
            # No SDK installed, or this trace is sampled out: its layers and calls would not
            # be recorded either (parent-based sampling), so skip building them.
            span.end()
            return NO_RUN
        span.set_attributes(
            {
                sc.OPERATION: sc.INVOKE_AGENT,
                sc.AGENT_NAME: name,
                "moa.mixture": repr(mixture),
                "moa.stream": stream,
            }
        )
        return _Run(self, span)


class _Run(RunTrace):
    def __init__(self, tracing: OtelTracing, span: Span) -> None:
        self.tracing, self.span = tracing, span

    def layer(self, name: str, index: int | None) -> LayerTrace:
        context = trace.set_span_in_context(self.span)
        span = self.tracing.tracer.start_span(
            f"moa.layer {name}", context=context, kind=SpanKind.INTERNAL
        )
        if span.is_recording():
            span.set_attribute("moa.layer.name", name)
            if index is not None:
                span.set_attribute("moa.layer.index", index)
        return _Layer(self.tracing, span)

    def finish(self, result: MoAResult) -> None:
        if not self.span.is_recording():
            return
        self.span.set_attributes(
            {
                sc.INPUT_TOKENS: result.usage.prompt_tokens,
                sc.OUTPUT_TOKENS: result.usage.completion_tokens,
                "moa.calls": len(result.neurons),
                "moa.partial": result.partial,
            }
        )
        if result.cost is not None:
            self.span.set_attribute(sc.COST, result.cost)

    def fail(self, error: BaseException) -> None:
        _fail(self.span, error)

    def end(self) -> None:
        self.span.end()


_REQUEST_ATTRIBUTES: weakref.WeakKeyDictionary[Neuron, dict[str, Any]] = weakref.WeakKeyDictionary()


class _Layer(LayerTrace):
    def __init__(self, tracing: OtelTracing, span: Span) -> None:
        self.tracing, self.span = tracing, span
        self._context = trace.set_span_in_context(span)

    def call(self, neuron: Neuron, primary: Neuron) -> CallTrace:
        known = _REQUEST_ATTRIBUTES.get(neuron)
        if known is None:  # a neuron's config is frozen: work its attributes out once
            known = _REQUEST_ATTRIBUTES[neuron] = sc.call_attributes(neuron)
        attributes = dict(known)
        if neuron is not primary:
            attributes["moa.fallback"] = True
            attributes["moa.fallback_of"] = primary.path
        span = self.tracing.tracer.start_span(
            f"{sc.CHAT} {attributes[sc.REQUEST_MODEL]}",
            context=self._context,
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        return _Call(self.tracing, span)

    def proposals(self, result: LayerResult) -> None:
        if not self.span.is_recording():
            return
        self.span.set_attributes(_layer_attributes(result))

    def aggregation(self, aggregation: Aggregation, offered: tuple[Reference, ...]) -> None:
        if not self.span.is_recording():
            return
        shown = [ref.path for ref in aggregation.selected]
        self.span.set_attributes(
            {
                "moa.aggregation.shown": shown,
                "moa.layer.dropped": [r.path for r in offered if r.path not in set(shown)],
                "moa.layer.cut_references": [t.path for t in aggregation.truncations],
            }
        )

    @contextmanager
    def active(self) -> Iterator[None]:
        token = _ACTIVE.set(self)
        try:
            yield
        finally:
            _ACTIVE.reset(token)

    async def iterate(self, stream: AsyncIterator[_T]) -> AsyncIterator[_T]:
        try:
            while True:
                token = _ACTIVE.set(self)
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    return
                finally:
                    _ACTIVE.reset(token)
                yield item
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            ran = getattr(exc, "layers", None)
            if isinstance(ran, tuple) and ran and self.span.is_recording():
                last = ran[-1]
                if getattr(last, "name", None) == getattr(exc, "layer", None):
                    self.span.set_attributes(_layer_attributes(last))
            _fail(self.span, exc)
        self.span.end()


def _layer_attributes(result: LayerResult) -> dict[str, Any]:
    return {
        "moa.layer.calls": len(result.neurons),
        "moa.layer.survivors": len(result.survivors),
        "moa.layer.failed": [n.path for n in result.failures if not n.timed_out],
        "moa.layer.timed_out": [n.path for n in result.neurons if n.timed_out],
        "moa.layer.dropped": [n.path for n in result.neurons if not n.ok or n.weight <= 0],
        "moa.layer.cut_references": [t.path for t in result.truncations],
    }


class _Call(CallTrace):
    def __init__(self, tracing: OtelTracing, span: Span) -> None:
        self.tracing, self.span = tracing, span
        self._request: NeuronRequest | None = None

    def request(self, request: NeuronRequest) -> None:
        if self.tracing.capture_content:
            self._request = request

    def attempt_failed(self, error: NeuronError, attempt: int) -> None:
        if not self.span.is_recording():
            return
        attributes: dict[str, Any] = {
            "moa.attempt": attempt,
            sc.ERROR_TYPE: type(error).__name__,
        }
        if error.status_code is not None:
            attributes["http.response.status_code"] = error.status_code
        self.span.add_event("moa.attempt.failed", attributes)

    def answered(self, generation: Generation, attempts: int) -> None:
        if not self.span.is_recording():
            return
        self.span.set_attributes(sc.response_attributes(generation))
        self.span.set_attribute("moa.attempts", attempts)
        self._content(generation.text)

    def gave_up(self, error: NeuronError, attempts: int) -> None:
        self.span.set_attribute("moa.attempts", attempts)
        if error.status_code is not None:
            self.span.set_attribute("http.response.status_code", error.status_code)
        self._content(None)
        _fail(self.span, error)

    def _content(self, answer: str | None) -> None:
        request = self._request
        if request is None or not self.span.is_recording():
            return
        attributes = {
            sc.SYSTEM_INSTRUCTIONS: sc.system_instructions(request.messages),
            sc.INPUT_MESSAGES: sc.input_messages(request.messages),
        }
        if answer is not None:
            attributes[sc.OUTPUT_MESSAGES] = sc.output_messages(answer)
        self.span.add_event(sc.CONTENT_EVENT, attributes)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            from moa.errors import NeuronError

            if not isinstance(exc, NeuronError):  # a NeuronError was given to gave_up()
                if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                    self.span.set_attribute("moa.cancelled", True)
                _fail(self.span, exc)
        self.span.end()
