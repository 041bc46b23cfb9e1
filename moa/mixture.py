"""`MixtureOfAgents`: the only room that knows the whole pipeline.

annotator (optional) -> proposal layers (each sees all survivors of the previous one)
-> aggregator -> `MoAResult`. Every request builds its own message list; the caller's input
is never mutated and no per-request state is kept on the mixture or its neurons.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from moa.annotator import UserQueryAnnotator
from moa.config import MoAConfig, NeuronConfig, load_config
from moa.errors import QueryError
from moa.layers.aggregation import LAYER_NAME, AggregationLayer
from moa.layers.layer import Layer, references_from
from moa.neurons.base import ChatMessage, Neuron, Reference
from moa.plugins import get_neuron_class
from moa.result import LayerResult, MoAResult, NeuronResult, Usage
from moa.retry import RetryPolicy
from moa.settings import Settings

__all__ = ["MixtureOfAgents", "Query", "create_moa_from_config", "normalise_query"]

Query = str | Sequence[str] | Sequence[Mapping[str, Any]]
"""A question, a list of user turns, or a chat history of `{"role", "content"}` dicts."""

_ROLES = frozenset({"system", "user", "assistant"})


def normalise_query(query: Query) -> tuple[list[ChatMessage], str]:
    """New chat messages for `query` and the text of its last user turn.

    A list of strings is a sequence of user turns; a list of dicts is a chat history.
    """
    if isinstance(query, str):
        messages: list[ChatMessage] = [{"role": "user", "content": query}]
    elif isinstance(query, Sequence) and query and all(isinstance(q, str) for q in query):
        messages = [{"role": "user", "content": str(q)} for q in query]
    elif isinstance(query, Sequence) and query and all(isinstance(q, Mapping) for q in query):
        messages = []
        for i, turn in enumerate(query):
            assert isinstance(turn, Mapping)
            role, content = turn.get("role"), turn.get("content")
            if role not in _ROLES or not isinstance(content, str):
                raise QueryError(
                    f"query[{i}] must be {{'role': 'system'|'user'|'assistant', "
                    f"'content': str}}, got role={role!r} and content of type "
                    f"{type(content).__name__}"
                )
            messages.append({"role": str(role), "content": content})
    else:
        raise QueryError(
            "query must be a non-empty str, a list of str (user turns) or a list of "
            f"{{'role', 'content'}} dicts, got {type(query).__name__}"
        )
    user_turns = [m["content"] for m in messages if m["role"] == "user"]
    if not user_turns or messages[-1]["role"] != "user":
        raise QueryError("the query must end with a user turn")
    if not user_turns[-1].strip():
        raise QueryError("the last user turn is empty")
    return messages, user_turns[-1]


def _build_neuron(
    config: NeuronConfig,
    settings: Settings,
    path: str,
    top: MoAConfig,
    fallbacks: Sequence[tuple[NeuronConfig, str]] | None = None,
) -> Neuron:
    """Build a neuron with its timeout, retry policy and fallbacks (`fallbacks`: configs and
    paths; default: the neuron's own `fallbacks` key)."""
    neuron = get_neuron_class(config.type)(config, settings=settings, path=path)
    neuron.timeout = config.timeout or top.timeout or settings.request_timeout
    retry = top.retry
    retries = config.max_retries if config.max_retries is not None else retry.max_retries
    neuron.retry_policy = RetryPolicy(
        max_retries=retries if retries is not None else settings.max_retries,
        backoff_base=retry.backoff_base,
        backoff_max=retry.backoff_max,
        jitter=retry.jitter,
        max_retry_after=retry.max_retry_after,
    )
    if fallbacks is None:
        fallbacks = [(c, f"{path}.fallbacks[{i}]") for i, c in enumerate(config.fallback_configs())]
    neuron.fallbacks = tuple(
        _build_neuron(c, settings, fallback_path, top, ()) for c, fallback_path in fallbacks
    )
    return neuron


class MixtureOfAgents:
    """A configured mixture. Build it with `create_moa_from_config()` or `from_config()`.

    One instance serves any number of concurrent `process()` calls.
    """

    def __init__(self, config: MoAConfig, *, settings: Settings | None = None) -> None:
        self.config = config
        self.settings = settings if settings is not None else Settings()
        self.annotator: UserQueryAnnotator | None = None
        if config.use_annotator and config.annotator is not None:
            self.annotator = UserQueryAnnotator(
                _build_neuron(config.annotator, self.settings, "annotator", config)
            )
        self.layers = tuple(
            Layer(
                f"proposal_layers[{i}]",
                i,
                [
                    _build_neuron(n, self.settings, f"proposal_layers[{i}].neurons[{j}]", config)
                    for j, n in enumerate(layer.neurons)
                ],
                layer.reference_prompt,
                deadline=layer.deadline,
                min_responses=layer.min_responses,
            )
            for i, layer in enumerate(config.proposal_layers)
        )
        agg = config.aggregation_layer
        agg_fallbacks = [
            (c, f"{LAYER_NAME}.fallbacks[{i}]") for i, c in enumerate(agg.neuron.fallback_configs())
        ]
        if agg.fallback_model is not None:
            agg_fallbacks.append(
                (agg.neuron.derive(agg.fallback_model), f"{LAYER_NAME}.fallback_model")
            )
        self.aggregation = AggregationLayer(
            _build_neuron(agg.neuron, self.settings, LAYER_NAME, config, agg_fallbacks), agg
        )
        self._prepared = False

    @classmethod
    def from_config(
        cls,
        source: str | Path | Mapping[str, Any] | MoAConfig,
        *,
        is_file_path: bool | None = None,
        settings: Settings | None = None,
    ) -> MixtureOfAgents:
        """Build from a YAML path, YAML text, a mapping or a `MoAConfig`."""
        config = (
            source
            if isinstance(source, MoAConfig)
            else load_config(source, is_file_path=is_file_path)
        )
        return cls(config, settings=settings)

    @property
    def neurons(self) -> tuple[Neuron, ...]:
        """Every neuron: annotator, each layer's, aggregator."""
        found = [self.annotator.neuron] if self.annotator is not None else []
        for layer in self.layers:
            found.extend(layer.neurons)
        found.append(self.aggregation.neuron)
        return tuple(found)

    def _with_fallbacks(self) -> list[Neuron]:
        return [n for neuron in self.neurons for n in (neuron, *neuron.fallbacks)]

    async def prepare(self) -> None:
        """Load what the neurons need (e.g. litellm, ~2 s) ahead of the first `process()`.

        Optional: `process()` calls it itself. Safe to call again; it does the work once.
        """
        # A flag, not a stored future: a mixture may be used from several event loops
        # (asyncio.run twice, process_sync). Neuron.prepare() must be idempotent.
        if not self._prepared:
            await asyncio.gather(*(n.prepare() for n in self._with_fallbacks()))
            self._prepared = True

    async def process(self, query: Query) -> MoAResult:
        """Run the mixture on `query` and return the answer with its full trace."""
        origin = time.perf_counter()
        history, user_query = normalise_query(query)
        await self.prepare()
        limit = self.config.max_concurrency
        semaphore = asyncio.Semaphore(limit) if limit is not None else None

        annotator_result: NeuronResult | None = None
        annotated: str | None = None
        if self.annotator is not None:
            annotator_result, annotated = await self.annotator.annotate(history, origin=origin)
            if annotated is not None:
                history = [*history[:-1], {"role": "user", "content": annotated}]
        effective_query = annotated if annotated is not None else user_query

        completed: list[LayerResult] = []
        references: tuple[Reference, ...] = ()
        for layer in self.layers:
            result = await layer.run(
                history, references, origin=origin, semaphore=semaphore, completed=completed
            )
            completed.append(result)
            references = references_from(result)

        rng = random.Random(self.config.seed) if self.config.seed is not None else random.Random()
        aggregator, selected = await self.aggregation.run(
            history, effective_query, references, rng, origin=origin, completed=completed
        )
        calls = [*([annotator_result] if annotator_result else [])]
        for layer_result in completed:
            calls.extend(layer_result.neurons)
        calls.append(aggregator)
        costs = [c.cost for c in calls if c.cost is not None]
        return MoAResult(
            content=aggregator.text or "",
            response_times={c.key: c.seconds for c in calls},
            total_completion_time=time.perf_counter() - origin,
            query=user_query,
            annotated_query=annotated,
            annotator=annotator_result,
            layers=tuple(completed),
            aggregator=aggregator,
            aggregated=tuple(ref.path for ref in selected),
            usage=Usage.total(c.usage for c in calls),
            cost=sum(costs) if costs else None,
            partial=any(layer_result.partial for layer_result in completed),
        )

    def process_sync(self, query: Query) -> MoAResult:
        """`process()` for scripts and notebooks; works whether or not a loop is running."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.process(query))
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.process(query)).result()

    async def aclose(self) -> None:
        """Release every neuron's resources."""
        await asyncio.gather(*(n.aclose() for n in self._with_fallbacks()))

    async def __aenter__(self) -> MixtureOfAgents:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        shape = "+".join(str(len(layer.neurons)) for layer in self.layers)
        annotator = "annotator+" if self.annotator is not None else ""
        return f"<MixtureOfAgents {annotator}{shape}+aggregator>"


def create_moa_from_config(
    path_or_yaml: str | Path | Mapping[str, Any] | MoAConfig,
    is_file_path: bool = True,
    *,
    settings: Settings | None = None,
) -> MixtureOfAgents:
    """Build a mixture from a YAML file (default), YAML text (`is_file_path=False`) or a dict.

    Raises `ConfigError` (file, key path, allowed values) before anything is called.
    """
    return MixtureOfAgents.from_config(path_or_yaml, is_file_path=is_file_path, settings=settings)
