"""The configuration tree: pydantic v2 models, frozen, unknown keys rejected.

Pure data: nothing here asks the plugin registry. Which `NeuronConfig` subclass a neuron
mapping is validated against is decided by the resolver `moa.config._dispatch` installs
(see `NeuronConfig.resolve_type`); loading files and explaining errors live beside this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ModelWrapValidatorHandler,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from moa.layers._template import placeholders_in
from moa.ratelimit._core import RateLimit

__all__ = [
    "AGGREGATION_PLACEHOLDERS",
    "DEFAULT_AGGREGATION_PROMPT",
    "DEFAULT_ANNOTATOR_PROMPT",
    "DEFAULT_REFERENCE_PROMPT",
    "AggregationLayerConfig",
    "MoAConfig",
    "NeuronConfig",
    "ProposalLayerConfig",
    "RateLimit",
    "RetryConfig",
    "TypeResolver",
    "key_path",
    "set_type_resolver",
]

AGGREGATION_PLACEHOLDERS = ("user_query", "responses", "response_weights")

DEFAULT_ANNOTATOR_PROMPT = (
    "You improve questions before a panel of experts answers them. Rewrite the user's latest "
    "message so that it is clear, specific and self-contained, keeping its intent and "
    "language. Reply with the rewritten message only."
)

DEFAULT_REFERENCE_PROMPT = (
    "You have been provided with a set of responses from various models to the latest user "
    "query. Synthesize them into a single, high-quality response. Critically evaluate the "
    "information, recognizing that some of it may be biased or incorrect. Do not simply "
    "replicate the given answers: offer a refined, accurate and comprehensive reply.\n\n"
    "Responses from models:\n{responses}"
)

DEFAULT_AGGREGATION_PROMPT = (
    "You are an advanced AI aggregator tasked with synthesizing multiple responses into a "
    "single, high-quality answer.\n"
    "USER QUERY: {user_query}\n"
    "RESPONSES:\n{responses}\n"
    "RESPONSE WEIGHTS:\n{response_weights}"
)

# allow_inf_nan=False: every number in a config is finite (`timeout: .inf` would wait forever)
_STRICT = ConfigDict(extra="forbid", frozen=True, defer_build=True, allow_inf_nan=False)

_MAX_REFERENCE_TOKENS = (
    "Most tokens of one previous answer this layer sees; longer ones are cut at a token "
    "boundary and marked. Default: no limit."
)
_MAX_CONTEXT_TOKENS = (
    "Most tokens of all previous answers together; the lowest-weight ones are cut first "
    "(and left out when nothing of them fits). Default: no limit."
)


TypeResolver = Callable[[str], "type[NeuronConfig]"]
"""Maps a neuron `type` name to its config class (raising `ValueError` for an unknown one)."""

_type_resolver: TypeResolver | None = None


def set_type_resolver(resolver: TypeResolver | None) -> None:
    """Install how a mapping validated as `NeuronConfig` itself finds its subclass by `type`.

    `moa.config._dispatch` installs the plugin registry's lookup when `moa.config` is
    imported, so that this module stays free of the registry."""
    global _type_resolver
    _type_resolver = resolver


class NeuronConfig(BaseModel):
    """Options every neuron type shares. Each type's `Neuron.Config` subclasses this.

    Validating a mapping against `NeuronConfig` itself picks the subclass for its `type`
    (default `llm`) with the resolver installed by `set_type_resolver` (the plugin registry's).
    """

    model_config = _STRICT

    type: str = Field(default="llm", description="Neuron type, as registered by a plugin.")
    name: str | None = Field(default=None, description="Label in traces; default: the model.")
    prompt: str | None = Field(default=None, description="System prompt of this neuron.")
    weight: float = Field(
        default=1.0, ge=0, description="Influence on the aggregate; 0 excludes the answer."
    )
    timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds one attempt may take (connect + read); default: the top-level "
        "timeout, else MOA_REQUEST_TIMEOUT, else 120.",
    )
    stream_idle_timeout: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Seconds a started stream may go without a new content delta; default: "
        "the top-level stream_idle_timeout, else 60.",
    )
    stream_timeout: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Seconds one streamed attempt may take in all; default: the top-level "
        "stream_timeout, else 600.",
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        le=10,
        description="Retries of a retryable failure; default: retry.max_retries, else "
        "MOA_MAX_RETRIES, else 2.",
    )
    fallbacks: list[str | dict[str, JsonValue]] = Field(
        default_factory=list,
        description="Tried in order when this neuron fails for good: a model name (same "
        "options, another model) or a mapping of the keys to change.",
    )
    rate_limit: RateLimit | None = Field(
        default=None,
        description="Limits of this neuron's provider bucket (endpoint + model + API key; a "
        "plugin type's: type + model + key), shared with every caller of that bucket, applied "
        "around each attempt; default: the top-level rate_limit. A neuron that calls no "
        "provider (vote) has no bucket and is never limited.",
    )

    @property
    def label(self) -> str:
        """Human-readable name: `name`, else the model, else the type."""
        model = getattr(self, "model", None)
        return self.name or (model if isinstance(model, str) else None) or self.type

    @model_validator(mode="wrap")
    @classmethod
    def _dispatch_on_type(
        cls, data: Any, handler: ModelWrapValidatorHandler[NeuronConfig]
    ) -> NeuronConfig:
        resolve = _type_resolver
        if cls is NeuronConfig and isinstance(data, Mapping) and resolve is not None:
            type_name = data.get("type", "llm")
            if not isinstance(type_name, str):
                raise ValueError(f"'type' must be a string, got {type(type_name).__name__}")
            return resolve(type_name).model_validate(data)
        return handler(data)

    @model_validator(mode="after")
    def _fallbacks_are_valid(self) -> NeuronConfig:
        for i, entry in enumerate(self.fallbacks):
            try:
                self.derive(entry)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                raise ValueError(f"fallbacks[{i}]: {_first_error(exc)}") from None
        return self

    def derive(self, change: str | Mapping[str, Any]) -> NeuronConfig:
        """A fallback of this neuron: the same options with `change` applied (a model name,
        or a mapping of keys). The fallback has no `name` (its label is its model) unless
        `change` gives one, and no fallbacks of its own."""
        if isinstance(change, str):
            if "model" not in type(self).model_fields:
                raise ValueError(
                    f"neuron type {self.type!r} has no 'model' key: give a mapping of the "
                    "keys to change instead of a model name"
                )
            change = {"model": change}
        if change.get("type", self.type) != self.type:
            raise ValueError("a fallback cannot change the neuron type")
        if "fallbacks" in change:
            raise ValueError("a fallback cannot have fallbacks of its own")
        base = self.model_dump(exclude={"fallbacks", "name"})
        return type(self).model_validate({**base, **change})

    def fallback_configs(self) -> list[NeuronConfig]:
        """The validated config of each fallback, in order."""
        return [self.derive(entry) for entry in self.fallbacks]


class ProposalLayerConfig(BaseModel):
    """One proposal layer: neurons that answer in parallel."""

    model_config = _STRICT

    neurons: list[SerializeAsAny[NeuronConfig]] = Field(min_length=1)
    reference_prompt: str = Field(
        default=DEFAULT_REFERENCE_PROMPT,
        description="Appended to each neuron's system prompt from the second layer on; "
        "{responses} is replaced by the previous layer's answers.",
    )
    max_reference_tokens: int | None = Field(default=None, gt=0, description=_MAX_REFERENCE_TOKENS)
    max_context_tokens: int | None = Field(default=None, gt=0, description=_MAX_CONTEXT_TOKENS)

    deadline: float | None = Field(
        default=None,
        gt=0,
        description="Seconds after which the layer goes on with the answers it has (once "
        "min_responses succeeded); the stragglers are cancelled and recorded as timed out.",
    )
    min_responses: int = Field(
        default=1,
        ge=1,
        description="Successful answers needed before the deadline may cut the stragglers.",
    )

    @field_validator("reference_prompt")
    @classmethod
    def _has_responses(cls, value: str) -> str:
        if "responses" not in placeholders_in(value, ["responses"]):
            raise ValueError("reference_prompt must contain the placeholder {responses}")
        return value

    @model_validator(mode="after")
    def _quorum_is_reachable(self) -> ProposalLayerConfig:
        if self.min_responses > len(self.neurons):
            raise ValueError(
                f"min_responses is {self.min_responses} but the layer has only "
                f"{len(self.neurons)} neuron(s)"
            )
        if self.min_responses > 1 and self.deadline is None:
            raise ValueError(
                "min_responses only matters with a deadline (without one the layer waits for "
                "every neuron): set deadline, or remove min_responses"
            )
        return self


class AggregationLayerConfig(BaseModel):
    """The final aggregator: one neuron's options plus how proposals are combined.

    In YAML the neuron's keys (`model`, `prompt`, `temperature`, ...) sit beside
    `aggregation_prompt`, `shuffle` and `dropout_rate`.
    """

    model_config = _STRICT
    _own_keys: ClassVar[frozenset[str]] = frozenset(
        {
            "aggregation_prompt",
            "shuffle",
            "dropout_rate",
            "max_reference_tokens",
            "max_context_tokens",
            "fallback_model",
        }
    )

    neuron: SerializeAsAny[NeuronConfig]
    aggregation_prompt: str = Field(
        default=DEFAULT_AGGREGATION_PROMPT,
        description="Sent as the last user turn; {user_query}, {responses} and "
        "{response_weights} are replaced, every other brace is left alone.",
    )
    shuffle: bool = Field(default=False, description="Randomise the order of the responses.")
    dropout_rate: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Chance to drop each response; never drops all."
    )
    max_reference_tokens: int | None = Field(default=None, gt=0, description=_MAX_REFERENCE_TOKENS)
    max_context_tokens: int | None = Field(default=None, gt=0, description=_MAX_CONTEXT_TOKENS)
    fallback_model: str | None = Field(
        default=None,
        min_length=1,
        description="Model tried (with the aggregator's other options) when the aggregator "
        "and its fallbacks failed.",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _split_neuron_keys(
        cls, data: Any, handler: ModelWrapValidatorHandler[AggregationLayerConfig]
    ) -> AggregationLayerConfig:
        if isinstance(data, Mapping) and "neuron" not in data:
            own = {k: v for k, v in data.items() if k in cls._own_keys}
            rest = {k: v for k, v in data.items() if k not in cls._own_keys}
            data = {**own, "neuron": rest}
        return handler(data)

    @model_serializer(mode="wrap")
    def _flatten(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        neuron = dumped.pop("neuron", None) or {}
        return {**neuron, **dumped}

    @field_validator("aggregation_prompt")
    @classmethod
    def _has_responses(cls, value: str) -> str:
        if "responses" not in placeholders_in(value, AGGREGATION_PLACEHOLDERS):
            raise ValueError(
                "aggregation_prompt must contain the placeholder {responses} "
                "(it may also use {user_query} and {response_weights})"
            )
        return value

    @model_validator(mode="after")
    def _fallback_model_is_valid(self) -> AggregationLayerConfig:
        if self.fallback_model is not None:
            try:
                self.neuron.derive(self.fallback_model)
            except ValueError as exc:
                raise ValueError(f"fallback_model: {_first_error(exc)}") from None
        return self


class RetryConfig(BaseModel):
    """Defaults of the retry policy for every neuron (see `moa.retry`)."""

    model_config = _STRICT

    max_retries: int | None = Field(
        default=None,
        ge=0,
        le=10,
        description="Retries of a retryable failure; default MOA_MAX_RETRIES, else 2.",
    )
    backoff_base: float = Field(
        default=0.5, ge=0, le=60, description="Seconds before the first retry; doubles each time."
    )
    backoff_max: float = Field(default=8.0, ge=0, le=600, description="Longest backoff, seconds.")
    jitter: float = Field(
        default=0.25, ge=0, le=1, description="Largest fraction of a backoff removed at random."
    )
    max_retry_after: float = Field(
        default=30.0,
        ge=0,
        description="Longest Retry-After honoured; a longer one ends the retries (fallbacks "
        "take over).",
    )


class MoAConfig(BaseModel):
    """A whole mixture: optional annotator, one or more proposal layers, one aggregator."""

    model_config = _STRICT

    use_annotator: bool = Field(default=False, description="Rewrite the query before layer 1.")
    annotator: SerializeAsAny[NeuronConfig] | None = None
    proposal_layers: list[ProposalLayerConfig] = Field(min_length=1)
    aggregation_layer: AggregationLayerConfig
    seed: int | None = Field(default=None, description="Makes shuffle and dropout reproducible.")
    max_concurrency: int | None = Field(
        default=None, ge=1, description="Most neuron calls in flight at once; default unbounded."
    )
    timeout: float | None = Field(
        default=None,
        gt=0,
        description="Default seconds per attempt for every neuron without its own timeout.",
    )
    stream_idle_timeout: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Default seconds a started stream may go without a new content delta "
        "(default 60).",
    )
    stream_timeout: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Default seconds one streamed attempt may take in all (default 600).",
    )
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Retry defaults.")
    rate_limit: RateLimit | None = Field(
        default=None,
        description="Default rate limit of every neuron's provider bucket (endpoint + model + "
        "API key: each bucket gets these limits of its own); neurons that call no provider "
        "(vote) are not counted.",
    )
    max_cost_per_query: float | None = Field(
        default=None,
        gt=0,
        description="USD: once a query's calls cost this much, it starts no further layer and "
        "fails with SpendLimitExceeded.",
    )

    @model_validator(mode="after")
    def _annotator_present(self) -> MoAConfig:
        if self.use_annotator and self.annotator is None:
            raise ValueError("use_annotator is true but no 'annotator' section is given")
        return self


def _first_error(exc: ValueError) -> str:
    """A short reason from a ValueError or pydantic ValidationError."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = key_path(first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        return f"{where}: {message}" if where else message
    return str(exc)


def key_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as written in YAML: `proposal_layers[1].neurons[0].model`."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if part == "neuron" and i > 0 and loc[i - 1] == "aggregation_layer":
            continue  # the aggregator's neuron keys sit beside its own keys in YAML
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(f".{part}" if parts else str(part))
    return "".join(parts)
