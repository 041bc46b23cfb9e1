"""`MixtureOfAgents`: the only room that knows the whole pipeline.

annotator (optional) -> proposal layers (each sees all survivors of the previous one)
-> aggregator -> `MoAResult`. Every request builds its own message list; the caller's input
is never mutated and no per-request state is kept on the mixture or its neurons.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from moa import tracing
from moa._runner import to_thread
from moa._sync import run_sync
from moa._unicode import lone_surrogate
from moa.annotator import UserQueryAnnotator
from moa.config import MoAConfig, NeuronConfig, load_config
from moa.errors import AggregationFailed, AllNeuronsFailed, QueryError, SpendLimitExceeded
from moa.events import (
    AggregationStarted,
    AnnotatorFinished,
    Completed,
    LayerFinished,
    LayerStarted,
    MoAEvent,
    NeuronFinished,
    Token,
)
from moa.layers._budget import Budget, context_window_problem
from moa.layers._call import CallPlan
from moa.layers.aggregation import LAYER_NAME, AggregationLayer
from moa.layers.layer import Layer, references_from
from moa.neurons.base import ChatMessage, Neuron, Reference
from moa.plugins import get_neuron_class
from moa.result import LayerResult, MoAResult, NeuronResult, Usage, total_cost
from moa.retry import RetryPolicy, StreamLimits
from moa.settings import Settings

__all__ = [
    "ContextWindowWarning",
    "MixtureOfAgents",
    "Query",
    "create_moa_from_config",
    "normalise_query",
]

logger = logging.getLogger("moa")


class ContextWindowWarning(UserWarning):
    """The aggregator's worst-case prompt may not fit its model's context window."""


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
    for i, message in enumerate(messages):
        position = lone_surrogate(message["content"])
        if position is not None:
            raise QueryError(
                f"query turn {i} holds a lone surrogate at position {position} (half of a "
                "UTF-16 pair, e.g. from the JSON escape \\ud83d): it is not valid Unicode text"
            )
    user_turns = [m["content"] for m in messages if m["role"] == "user"]
    if not user_turns or messages[-1]["role"] != "user":
        raise QueryError("the query must end with a user turn")
    if not user_turns[-1].strip():
        raise QueryError("the last user turn is empty")
    return messages, user_turns[-1]


_STREAM = StreamLimits()  # the defaults


def _call_plan(
    config: NeuronConfig,
    settings: Settings,
    path: str,
    top: MoAConfig,
    fallbacks: Sequence[tuple[NeuronConfig, str]] | None = None,
) -> CallPlan:
    """Build a neuron and decide, once, how it is called: its per-attempt timeout, retry
    policy, fallbacks (`fallbacks`: configs and paths; default: the neuron's own
    `fallbacks` key) and shared rate limit (its own, else the top-level default; none for a
    neuron whose `bucket` is None)."""
    neuron = get_neuron_class(config.type).create(config, settings=settings, path=path)
    limit = config.rate_limit or top.rate_limit
    bucket = neuron.bucket if limit is not None else None  # None: calls no provider
    neuron.rate_limit = limit if bucket is not None else None
    retry = top.retry
    retries = config.max_retries if config.max_retries is not None else retry.max_retries
    if fallbacks is None:
        fallbacks = [(c, f"{path}.fallbacks[{i}]") for i, c in enumerate(config.fallback_configs())]
    return CallPlan(
        neuron=neuron,
        timeout=config.timeout or top.timeout or settings.request_timeout,
        stream_limits=StreamLimits(
            idle=config.stream_idle_timeout or top.stream_idle_timeout or _STREAM.idle,
            total=config.stream_timeout or top.stream_timeout or _STREAM.total,
        ),
        retry=RetryPolicy(
            max_retries=retries if retries is not None else settings.max_retries,
            backoff_base=retry.backoff_base,
            backoff_max=retry.backoff_max,
            jitter=retry.jitter,
            max_retry_after=retry.max_retry_after,
        ),
        fallbacks=tuple(
            _call_plan(c, settings, fallback_path, top, ()) for c, fallback_path in fallbacks
        ),
        rate_limit=neuron.rate_limit,
        bucket=bucket,
    )


class MixtureOfAgents:
    """A configured mixture. Build it with `create_moa_from_config()` or `from_config()`.

    One instance serves any number of concurrent `process()` calls.
    """

    def __init__(self, config: MoAConfig, *, settings: Settings | None = None) -> None:
        self.config = config
        self.settings = settings if settings is not None else Settings()
        self.name = "moa"  # gen_ai.agent.name of its runs' root spans (see moa.tracing)
        self.annotator: UserQueryAnnotator | None = None
        if config.use_annotator and config.annotator is not None:
            self.annotator = UserQueryAnnotator(
                _call_plan(config.annotator, self.settings, "annotator", config)
            )
        self.layers = tuple(
            Layer(
                f"proposal_layers[{i}]",
                i,
                [
                    _call_plan(n, self.settings, f"proposal_layers[{i}].neurons[{j}]", config)
                    for j, n in enumerate(layer.neurons)
                ],
                layer.reference_prompt,
                budget=Budget(layer.max_reference_tokens, layer.max_context_tokens),
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
            _call_plan(agg.neuron, self.settings, LAYER_NAME, config, agg_fallbacks), agg
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

    @property
    def plans(self) -> tuple[CallPlan, ...]:
        """How each neuron is called (timeout, retry policy, fallbacks), in `neurons` order."""
        found = [self.annotator.plan] if self.annotator is not None else []
        for layer in self.layers:
            found.extend(layer.plans)
        found.append(self.aggregation.plan)
        return tuple(found)

    def _with_fallbacks(self) -> list[Neuron]:
        return [c.neuron for plan in self.plans for c in plan.candidates]

    async def prepare(self) -> None:
        """Load what the neurons need (e.g. litellm, ~2 s) ahead of the first `process()`,
        and check that the aggregator's worst-case prompt fits its context window.

        Optional: `process()` and `stream()` call it. Safe to call again; it does the work once.
        """
        # A flag, not a stored future: a mixture may be used from several event loops
        # (asyncio.run twice, process_sync). Neuron.prepare() must be idempotent.
        if not self._prepared:
            await asyncio.gather(*(n.prepare() for n in self._with_fallbacks()))
            await to_thread(self._warn_about_context_window)
            self._prepared = True

    def check_context_window(self) -> str | None:
        """Why the aggregator's worst-case prompt (every answer of the last proposal layer at
        its longest, within the aggregator's budget) may exceed its model's context window, or
        None if it fits or the window is unknown. Blocking: may load litellm's model info."""
        agg = self.aggregation
        return context_window_problem(
            agg.neuron, self.layers[-1].neurons, agg.budget, agg.config.aggregation_prompt
        )

    def _warn_about_context_window(self) -> None:
        try:
            problem = self.check_context_window()
        except Exception:  # a check must never break a mixture
            logger.debug("context window check failed", exc_info=True)
            return
        if problem is not None:
            warnings.warn(problem, ContextWindowWarning, stacklevel=2)

    async def process(self, query: Query) -> MoAResult:
        """Run the mixture on `query` and return the answer with its full trace.

        Raises `AllNeuronsFailed` when a layer has no survivor and `AggregationFailed` when
        the aggregator fails; both keep every layer that ran (`layers`).
        """
        result: MoAResult | None = None
        async for event in self._run(query, stream=False):
            if isinstance(event, Completed):
                result = event.result
        assert result is not None, "the pipeline ended without a result"
        return result

    async def stream(self, query: Query) -> AsyncGenerator[MoAEvent, None]:
        """Run the mixture on `query`, yielding events as it goes (see `moa.events`): the
        annotator's result, each layer's start, each neuron as it finishes and each layer's
        end, then the aggregator's text as the upstream streams it, then `Completed` with the
        same `MoAResult` that `process()` returns.

        A failure is raised, the same exception `process()` raises (with every layer that ran
        in its `layers`, and for `AggregationFailed` the text streamed so far in
        `partial_text`), so a plain `async for` cannot miss it.
        """
        async for event in self._run(query, stream=True):
            yield event

    async def stream_text(self, query: Query) -> AsyncGenerator[str, None]:
        """Only the aggregator's text, as it arrives. Raises as `process()` does."""
        async for event in self.stream(query):
            if isinstance(event, Token):
                yield event.text

    def _check_spend(self, annotator: NeuronResult | None, completed: list[LayerResult]) -> None:
        """Raise `SpendLimitExceeded` if the query's calls so far cost `max_cost_per_query`."""
        cap = self.config.max_cost_per_query
        if cap is None:
            return
        calls = [annotator] if annotator is not None else []
        spent = sum(n.cost or 0.0 for n in [*calls, *(n for r in completed for n in r.neurons)])
        if spent >= cap:
            raise SpendLimitExceeded(
                f"the query has cost ${spent:.6f}, reaching max_cost_per_query ${cap}: "
                "no further layer was started",
                spent=spent,
                limit=cap,
                layers=completed,
            )

    def _run(self, query: Query, *, stream: bool) -> AsyncIterator[MoAEvent]:
        """The pipeline, traced when tracing is on (see `moa.tracing`)."""
        traced = tracing.start_run(self, stream=stream)
        events = self._pipeline(query, stream=stream, traced=traced)
        return events if traced is tracing.NO_RUN else tracing.traced_run(traced, events)

    async def _pipeline(
        self, query: Query, *, stream: bool, traced: tracing.RunTrace
    ) -> AsyncIterator[MoAEvent]:
        """The pipeline, shared by `process()` (stream=False: no per-neuron events, and the
        aggregator answers in one piece) and `stream()`."""
        origin = time.perf_counter()
        history, user_query = normalise_query(query)
        await self.prepare()
        limit = self.config.max_concurrency
        semaphore = asyncio.Semaphore(limit) if limit is not None else None

        annotator_result: NeuronResult | None = None
        annotated: str | None = None
        if self.annotator is not None:
            with traced.layer("annotator", None) as span, span.active():
                annotator_result, annotated = await self.annotator.annotate(history, origin=origin)
            if annotated is not None:
                history = [*history[:-1], {"role": "user", "content": annotated}]
            yield AnnotatorFinished(neuron=annotator_result, annotated_query=annotated)
        effective_query = annotated if annotated is not None else user_query

        completed: list[LayerResult] = []
        try:
            references: tuple[Reference, ...] = ()
            for layer in self.layers:
                self._check_spend(annotator_result, completed)
                yield LayerStarted(layer=layer.name, index=layer.index)
                with traced.layer(layer.name, layer.index) as span:
                    if stream:
                        finished: asyncio.Queue[NeuronResult | None] = asyncio.Queue()
                        with span.active():  # the task keeps it, whoever resumes this generator
                            task = asyncio.ensure_future(
                                layer.run(
                                    history, references, origin=origin, semaphore=semaphore,
                                    on_result=finished.put_nowait,
                                )
                            )  # fmt: skip
                        task.add_done_callback(_closer(finished))
                        try:
                            while (neuron := await finished.get()) is not None:
                                yield NeuronFinished(neuron=neuron)
                            result = task.result()
                        finally:
                            await _cancel(task)
                    else:
                        with span.active():
                            result = await layer.run(
                                history, references, origin=origin, semaphore=semaphore
                            )
                    span.proposals(result)
                completed.append(result)
                references = references_from(result)
                yield LayerFinished(layer=result)

            self._check_spend(annotator_result, completed)
            rng = (
                random.Random(self.config.seed) if self.config.seed is not None else random.Random()
            )
            with traced.layer(LAYER_NAME, len(self.layers)) as span:
                aggregation = await self.aggregation.build_request(
                    history, effective_query, references, rng
                )
                span.aggregation(aggregation, references)
                yield AggregationStarted()
                if stream:
                    aggregator: NeuronResult | None = None
                    async for piece in span.iterate(
                        self.aggregation.stream(aggregation, origin=origin)
                    ):
                        if isinstance(piece, str):
                            yield Token(text=piece)
                        else:
                            aggregator = piece
                    assert aggregator is not None
                else:
                    with span.active():
                        aggregator = await self.aggregation.run(aggregation, origin=origin)
            calls = [*([annotator_result] if annotator_result else [])]
            for layer_result in completed:
                calls.extend(layer_result.neurons)
            calls.append(aggregator)
            truncations = [t for layer_result in completed for t in layer_result.truncations]
            yield Completed(
                result=MoAResult(
                    content=aggregator.text or "",
                    response_times={c.key: c.seconds for c in calls},
                    total_completion_time=time.perf_counter() - origin,
                    query=user_query,
                    annotated_query=annotated,
                    annotator=annotator_result,
                    layers=tuple(completed),
                    aggregator=aggregator,
                    aggregated=tuple(ref.path for ref in aggregation.selected),
                    usage=Usage.total(c.usage for c in calls),
                    cost=total_cost(calls),
                    truncations=(*truncations, *aggregation.truncations),
                    partial=any(layer_result.partial for layer_result in completed),
                )
            )
        except (AllNeuronsFailed, AggregationFailed) as exc:
            # The one place a failure gets the layers that completed before it: a layer
            # raises with its own result only, the aggregator with none.
            exc.layers = (*completed, *exc.layers)
            raise

    def process_sync(self, query: Query) -> MoAResult:
        """`process()` for scripts and notebooks; works whether or not a loop is running.

        Ctrl-C cancels the run and raises `KeyboardInterrupt` at once, even while a worker
        thread is still importing litellm or loading a tokenizer (it is abandoned)."""
        return run_sync(lambda: self.process(query))

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


def _closer(queue: asyncio.Queue[NeuronResult | None]) -> Callable[[object], None]:
    """A done-callback that marks the end of `queue` with None."""
    return lambda _: queue.put_nowait(None)


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel `task` if it is still running (the consumer left early) and wait for it."""
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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
