"""`AggregationLayer`: pick, order and weigh the proposals, render the prompt, make one call.

Selection never mutates its input: responses with weight 0 are excluded, then each is dropped
with probability `dropout_rate` (never all of them), then they are shuffled (`shuffle`) or
ordered by weight. Weights shown to the aggregator are normalised over what is left.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from moa.config import AggregationLayerConfig
from moa.errors import AggregationFailed, NeuronError
from moa.layers._budget import Budget
from moa.layers._call import CallPlan, StreamedCall, call_neuron
from moa.layers._prompts import format_responses, system_then
from moa.layers._template import render
from moa.layers.layer import fit_to_budget
from moa.neurons.base import ChatMessage, Neuron, NeuronRequest, Reference
from moa.result import LayerResult, NeuronResult, Truncation

__all__ = ["Aggregation", "AggregationLayer"]

LAYER_NAME = "aggregation_layer"


@dataclass(frozen=True)
class Aggregation:
    """What the aggregator is asked: the conversation, the turns to send (the rendered
    prompt last), the answers it sees (in the order shown, after any cut) and what the budget
    cut. `request_for(neuron)` builds the request with that neuron's own system prompt, so a
    fallback aggregator keeps its prompt."""

    history: tuple[ChatMessage, ...]
    turns: tuple[ChatMessage, ...]
    selected: tuple[Reference, ...]
    truncations: tuple[Truncation, ...]

    def request_for(self, neuron: Neuron) -> NeuronRequest:
        return NeuronRequest(
            messages=system_then(neuron.config.prompt, self.turns),
            history=self.history,
            references=self.selected,
        )


class AggregationLayer:
    """The final aggregator of a mixture."""

    def __init__(self, plan: CallPlan, config: AggregationLayerConfig) -> None:
        self.plan = plan
        self.config = config
        self.budget = Budget(config.max_reference_tokens, config.max_context_tokens)

    @property
    def neuron(self) -> Neuron:
        """The aggregator's neuron (its fallbacks are in `plan`)."""
        return self.plan.neuron

    def select(self, references: Sequence[Reference], rng: random.Random) -> list[Reference]:
        """The responses the aggregator sees, in the order it sees them (a new list)."""
        candidates = [ref for ref in references if ref.weight > 0]
        if self.config.dropout_rate > 0 and len(candidates) > 1:
            kept = [ref for ref in candidates if rng.random() >= self.config.dropout_rate]
            candidates = kept or [rng.choice(candidates)]
        if self.config.shuffle:
            candidates = list(candidates)
            rng.shuffle(candidates)
        else:
            candidates = sorted(candidates, key=lambda ref: -ref.weight)
        return candidates

    def render(self, user_query: str, selected: Sequence[Reference]) -> str:
        """The aggregation prompt with exactly its three placeholders filled in."""
        total = sum(ref.weight for ref in selected) or 1.0
        weights = "\n".join(
            f"Response {i}: {ref.weight / total:.3f}" for i, ref in enumerate(selected, 1)
        )
        return render(
            self.config.aggregation_prompt,
            {
                "user_query": user_query,
                "responses": format_responses(selected),
                "response_weights": weights,
            },
        )

    async def prepare(
        self,
        history: Sequence[ChatMessage],
        user_query: str,
        references: Sequence[Reference],
        rng: random.Random,
    ) -> Aggregation:
        """Select the answers, fit them to the budget (lowest weight cut first, whatever
        order they are shown in) and build the aggregator's request."""
        selected = self.select(references, rng)
        if self.budget.active:
            rank = {ref.path: i for i, ref in enumerate(references)}
            by_priority = sorted(selected, key=lambda ref: rank[ref.path])
            fitted, truncations = await fit_to_budget(
                by_priority, self.budget, self.neuron, layer=LAYER_NAME
            )
            kept = {ref.path: ref for ref in fitted}
            selected = [kept[ref.path] for ref in selected if ref.path in kept]
        else:
            truncations = []
        prompt = self.render(user_query, selected)
        turns = (*history[:-1], {"role": "user", "content": prompt})
        return Aggregation(tuple(history), tuple(turns), tuple(selected), tuple(truncations))

    async def run(
        self, aggregation: Aggregation, *, origin: float, completed: Sequence[LayerResult] = ()
    ) -> NeuronResult:
        """Aggregate; raise `AggregationFailed` (keeping every completed layer) on failure."""
        result, _, failure = await call_neuron(
            self.plan, aggregation.request_for, layer=LAYER_NAME, index=0, origin=origin
        )
        if failure is not None:
            raise self._failed(failure, result.attempt_errors, completed)
        return result

    async def stream(
        self, aggregation: Aggregation, *, origin: float, completed: Sequence[LayerResult] = ()
    ) -> AsyncIterator[str | NeuronResult]:
        """Aggregate with the neuron's `stream()`: yield text deltas as they arrive, then the
        aggregator's `NeuronResult`; raise `AggregationFailed` as `run()` does."""
        call = StreamedCall(
            self.plan, aggregation.request_for, layer=LAYER_NAME, index=0, origin=origin
        )
        async for piece in call:
            yield piece
        assert call.result is not None
        if call.failure is not None:
            raise self._failed(call.failure, call.result.attempt_errors, completed)
        yield call.result

    def _failed(
        self,
        failure: NeuronError,
        attempt_errors: Sequence[str],
        completed: Sequence[LayerResult],
    ) -> AggregationFailed:
        count = len(self.plan.fallbacks)
        who = f"the aggregator and its {count} fallback(s)" if count else "the aggregator"
        reasons = "; ".join(attempt_errors) or str(failure)
        error = AggregationFailed(
            f"{who} failed, the proposals are kept on this error: {reasons}",
            cause=failure,
            layers=completed,
        )
        error.__cause__ = failure
        return error
