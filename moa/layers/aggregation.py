"""`AggregationLayer`: pick, order and weigh the proposals, render the prompt, make one call.

Selection never mutates its input: responses with weight 0 are excluded, then each is dropped
with probability `dropout_rate` (never all of them), then they are shuffled (`shuffle`) or
ordered by weight. Weights shown to the aggregator are normalised over what is left.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from moa._template import render
from moa.config import AggregationLayerConfig
from moa.errors import AggregationFailed
from moa.layers._call import call_neuron, format_responses, system_then
from moa.neurons.base import ChatMessage, Neuron, NeuronRequest, Reference
from moa.result import LayerResult, NeuronResult

__all__ = ["AggregationLayer"]

LAYER_NAME = "aggregation_layer"


class AggregationLayer:
    """The final aggregator of a mixture."""

    def __init__(self, neuron: Neuron, config: AggregationLayerConfig) -> None:
        self.neuron = neuron
        self.config = config

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

    async def run(
        self,
        history: Sequence[ChatMessage],
        user_query: str,
        references: Sequence[Reference],
        rng: random.Random,
        *,
        origin: float,
        completed: Sequence[LayerResult] = (),
    ) -> tuple[NeuronResult, list[Reference]]:
        """Aggregate; raise `AggregationFailed` (keeping every completed layer) on failure."""
        selected = self.select(references, rng)
        prompt = self.render(user_query, selected)
        turns = (*history[:-1], {"role": "user", "content": prompt})

        def request_for(neuron: Neuron) -> NeuronRequest:
            return NeuronRequest(
                messages=system_then(neuron.config.prompt, turns),
                history=tuple(history),
                references=tuple(selected),
            )

        result, _, failure = await call_neuron(
            self.neuron, request_for, layer=LAYER_NAME, index=0, origin=origin
        )
        if failure is not None:
            count = len(self.neuron.fallbacks)
            who = f"the aggregator and its {count} fallback(s)" if count else "the aggregator"
            reasons = "; ".join(result.attempt_errors) or str(failure)
            raise AggregationFailed(
                f"{who} failed, the proposals are kept on this error: {reasons}",
                cause=failure,
                layers=completed,
            ) from failure
        return result, selected
