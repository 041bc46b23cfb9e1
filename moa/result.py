"""What `MixtureOfAgents.process()` returns: the answer plus a full trace of how it was made.

Every result type is a frozen pydantic model, so `result.model_dump_json()` gives JSON, and
`MoAResult` also answers mapping access (`result["content"]`) as the original moa-llm did.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

__all__ = ["LayerResult", "MoAResult", "NeuronResult", "Truncation", "Usage", "total_cost"]

_FROZEN = ConfigDict(frozen=True, defer_build=True)


class Usage(BaseModel):
    """Token counts of one call, or summed over many."""

    model_config = _FROZEN

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )

    @classmethod
    def total(cls, usages: Iterable[Usage | None]) -> Usage:
        prompt = completion = 0
        for usage in usages:
            if usage is not None:
                prompt += usage.prompt_tokens
                completion += usage.completion_tokens
        return cls(prompt_tokens=prompt, completion_tokens=completion)


def total_cost(calls: Iterable[NeuronResult]) -> float | None:
    """USD summed over the calls that answered; `None` if any of them has an unknown cost
    (a partial sum would pass for the whole bill). Failed calls are not counted."""
    total = 0.0
    for call in calls:
        if call.ok:
            if call.cost is None:
                return None
            total += call.cost
    return total


class Truncation(BaseModel):
    """One reference cut to fit a context budget before `layer` saw it.

    `kept_tokens == 0` means the reference was left out entirely. Tokens are counted with
    the receiving neuron's tokenizer; the marker appended to a cut text is not counted.
    """

    model_config = _FROZEN

    layer: str = Field(
        description="Who received the reference: proposal_layers[i] or aggregation_layer."
    )
    path: str = Field(description="Config path of the neuron whose answer was cut.")
    weight: float
    original_tokens: int
    kept_tokens: int
    reason: Literal["max_reference_tokens", "max_context_tokens"]

    @property
    def dropped(self) -> bool:
        return self.kept_tokens == 0


class NeuronResult(BaseModel):
    """One neuron's call: what it answered, or why it failed, and how long it took.

    `start` and `end` are seconds since `process()` began, so overlaps can be read off.
    `attempts` counts the requests made (retries and fallbacks included), `attempt_errors`
    gives the reason of each failed one, oldest first, and `fallback` names the fallback that
    answered (None when the neuron's own model did). `timed_out` marks a straggler that the
    layer's deadline cut off. `queued_seconds`, when the neuron type reports it (local models
    shared by several neurons), is the part of `seconds` spent waiting for the model.
    """

    model_config = _FROZEN

    path: str = Field(description="Config key path, e.g. proposal_layers[0].neurons[1].")
    layer: str = Field(description="annotator, proposal_layers[i] or aggregation_layer.")
    index: int
    model: str = Field(description="The neuron's label: its name or model.")
    weight: float = 1.0
    text: str | None = None
    error: str | None = None
    error_type: str | None = None
    status_code: int | None = None
    seconds: float = 0.0
    start: float = 0.0
    end: float = 0.0
    usage: Usage | None = None
    cost: float | None = Field(default=None, description="USD; None when the price is unknown.")
    time_to_first_token: float | None = Field(
        default=None, description="Seconds from the call's start to its first streamed text."
    )
    queued_seconds: float | None = Field(
        default=None,
        description="Seconds of `seconds` spent waiting for a shared model before generating "
        "(from the neuron's Generation.extra['queued_seconds']; None when not reported).",
    )
    attempts: int = 1
    attempt_errors: tuple[str, ...] = ()
    fallback: str | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None

    @property
    def key(self) -> str:
        """The key of this call in `MoAResult.response_times`."""
        return f"{self.path} {self.model}"


class LayerResult(BaseModel):
    """One proposal layer: each neuron's result in config order, and the layer's wall time."""

    model_config = _FROZEN

    name: str
    index: int
    neurons: tuple[NeuronResult, ...]
    seconds: float
    truncations: tuple[Truncation, ...] = Field(
        default=(), description="References of the previous layer cut to fit this layer's budget."
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def usage(self) -> Usage:
        """Tokens summed over this layer's calls."""
        return Usage.total(n.usage for n in self.neurons)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cost(self) -> float | None:
        """USD summed over this layer's answers; None if any answer's price is unknown."""
        return total_cost(self.neurons)

    @property
    def survivors(self) -> tuple[NeuronResult, ...]:
        return tuple(n for n in self.neurons if n.ok)

    @property
    def failures(self) -> tuple[NeuronResult, ...]:
        return tuple(n for n in self.neurons if not n.ok)

    @property
    def partial(self) -> bool:
        """Whether the layer's deadline cut off at least one straggler."""
        return any(n.timed_out for n in self.neurons)


class MoAResult(BaseModel):
    """The answer of a mixture and its trace.

    `result.content` and `result["content"]` are the same; so are `response_times` (seconds
    per call, keyed `"<path> <model>"`) and `total_completion_time` (wall seconds of
    `process()`).
    """

    model_config = _FROZEN

    content: str
    response_times: dict[str, float]
    total_completion_time: float
    query: str = Field(description="The last user turn as given.")
    annotated_query: str | None = Field(
        default=None, description="The annotator's rewrite, which later layers saw."
    )
    annotator: NeuronResult | None = None
    layers: tuple[LayerResult, ...] = ()
    aggregator: NeuronResult
    aggregated: tuple[str, ...] = Field(
        default=(), description="Paths of the responses the aggregator saw, in the order shown."
    )
    usage: Usage = Field(default_factory=Usage, description="Tokens summed over every call.")
    cost: float | None = Field(
        default=None, description="USD over every answer; None if any answer's price is unknown."
    )
    truncations: tuple[Truncation, ...] = Field(
        default=(), description="Every reference cut to fit a budget, the aggregator's included."
    )
    partial: bool = Field(
        default=False,
        description="A layer deadline cut off at least one straggler: the answer was made "
        "without it.",
    )

    @property
    def neurons(self) -> tuple[NeuronResult, ...]:
        """Every call of the run, in order: annotator, each layer's neurons, aggregator."""
        calls = [self.annotator] if self.annotator is not None else []
        for layer in self.layers:
            calls.extend(layer.neurons)
        calls.append(self.aggregator)
        return tuple(calls)

    def __getitem__(self, key: str) -> Any:
        if key in type(self).model_fields:
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def keys(self) -> Iterator[str]:
        return iter(type(self).model_fields)

    def __contains__(self, key: object) -> bool:
        return key in type(self).model_fields
