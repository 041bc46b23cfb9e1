"""What `MixtureOfAgents.stream()` yields: typed, frozen events with a `kind` discriminator.

One run yields, in order:

```
AnnotatorFinished                      only when the annotator is on
LayerStarted, NeuronFinished..., LayerFinished     once per proposal layer; neurons in the
                                       order they finish (failed ones carry their error)
AggregationStarted
Token...                               the aggregator's text as it arrives upstream
Completed                              the full MoAResult, the same as process() returns
```

or, if the run fails, `stream()` raises the same exception `process()` would have raised
instead of the rest, so an `async for` cannot miss the failure; it carries every layer that
ran (`layers`), so the proposals already paid for are not lost, and for a failed aggregator
the text streamed so far (`AggregationFailed.partial_text`).

Every event is a pydantic model: `event.model_dump_json()` is a ready-made SSE payload, and
`MoAEventAdapter.validate_json(text)` parses one back.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from moa.result import LayerResult, MoAResult, NeuronResult

__all__ = [
    "AggregationStarted",
    "AnnotatorFinished",
    "Completed",
    "LayerFinished",
    "LayerStarted",
    "MoAEvent",
    "MoAEventAdapter",
    "NeuronFinished",
    "StreamFailed",
    "Token",
]

_FROZEN = ConfigDict(frozen=True, defer_build=True)


class AnnotatorFinished(BaseModel):
    """The annotator answered (or failed: then `annotated_query` is None and the original
    query is used)."""

    model_config = _FROZEN

    kind: Literal["annotator_finished"] = "annotator_finished"
    neuron: NeuronResult
    annotated_query: str | None = None


class LayerStarted(BaseModel):
    """A proposal layer's neurons are being called."""

    model_config = _FROZEN

    kind: Literal["layer_started"] = "layer_started"
    layer: str
    index: int


class NeuronFinished(BaseModel):
    """One proposal neuron finished: `neuron.text` and timing, or `neuron.error`."""

    model_config = _FROZEN

    kind: Literal["neuron_finished"] = "neuron_finished"
    neuron: NeuronResult


class LayerFinished(BaseModel):
    """A proposal layer finished with at least one survivor."""

    model_config = _FROZEN

    kind: Literal["layer_finished"] = "layer_finished"
    layer: LayerResult


class AggregationStarted(BaseModel):
    """The aggregator is being called; `Token` events follow."""

    model_config = _FROZEN

    kind: Literal["aggregation_started"] = "aggregation_started"


class Token(BaseModel):
    """A piece of the aggregator's answer, as the upstream sent it."""

    model_config = _FROZEN

    kind: Literal["token"] = "token"
    text: str


class Completed(BaseModel):
    """The run finished; `result` is what `process()` would have returned."""

    model_config = _FROZEN

    kind: Literal["completed"] = "completed"
    result: MoAResult


class StreamFailed(BaseModel):
    """Deprecated: `MixtureOfAgents.stream()` no longer yields this event; a failed run raises
    its exception, which carries the same data (`layers`, and `partial_text` on
    `AggregationFailed`). Kept so that event logs written by earlier versions still parse.

    `error` is the message, `error_type` the exception's class name, `layers` every layer
    that ran, and `partial_text` what the aggregator had streamed before it failed."""

    model_config = _FROZEN

    kind: Literal["error"] = "error"
    error: str
    error_type: str
    layers: tuple[LayerResult, ...] = ()
    partial_text: str = ""


MoAEvent = Annotated[
    AnnotatorFinished
    | LayerStarted
    | NeuronFinished
    | LayerFinished
    | AggregationStarted
    | Token
    | Completed
    | StreamFailed,
    Field(discriminator="kind"),
]
"""Any event of `MixtureOfAgents.stream()`; `event.kind` tells which."""

MoAEventAdapter: TypeAdapter[MoAEvent] = TypeAdapter(MoAEvent, config=ConfigDict(defer_build=True))
"""Parses an event back from JSON or a dict: `MoAEventAdapter.validate_json(payload)`."""
