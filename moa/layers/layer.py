"""`Layer`: run every neuron of a proposal layer concurrently and collect the survivors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from moa._runner import to_thread
from moa.errors import AllNeuronsFailed, NeuronError
from moa.layers._budget import Budget, fit_references
from moa.layers._call import (
    CallPlan,
    CallState,
    call_neuron,
    cut_off,
    gather_all,
    gather_until,
)
from moa.layers._prompts import format_responses, system_then
from moa.layers._template import render
from moa.neurons.base import ChatMessage, Generation, Neuron, NeuronRequest, Reference
from moa.result import LayerResult, NeuronResult, Truncation

__all__ = ["Layer", "fit_to_budget", "references_from"]

_Outcome = tuple[NeuronResult, Generation | None, NeuronError | None]


def references_from(layer: LayerResult) -> tuple[Reference, ...]:
    """The answers a layer passes on: survivors with weight > 0, highest weight first
    (config order among equal weights)."""
    refs = [
        Reference(text=n.text, weight=n.weight, label=n.model, path=n.path)
        for n in layer.neurons
        if n.text is not None and n.error is None and n.weight > 0
    ]
    refs.sort(key=lambda ref: -ref.weight)
    return tuple(refs)


async def fit_to_budget(
    references: Sequence[Reference], budget: Budget | None, neuron: Neuron, *, layer: str
) -> tuple[list[Reference], list[Truncation]]:
    """`fit_references` with `neuron`'s tokenizer, in a worker thread (tokenizers block)."""
    if budget is None or not budget.active or not references:
        return list(references), []

    def fit() -> tuple[list[Reference], list[Truncation]]:
        return fit_references(references, budget, neuron.tokenizer(), layer=layer)

    return await to_thread(fit)


class Layer:
    """Neurons that answer in parallel. From the second layer on, each neuron's system prompt
    is followed by `reference_prompt` with every surviving answer of the previous layer.

    With a `budget`, those answers are first cut to fit it (counted with the tokenizer of
    the layer's first neuron). With a `deadline` (seconds), once it has passed and at least
    `min_responses` neurons answered, the layer cancels the stragglers, records them as
    `timed_out` and goes on.
    """

    def __init__(
        self,
        name: str,
        index: int,
        plans: Sequence[CallPlan],
        reference_prompt: str,
        *,
        budget: Budget | None = None,
        deadline: float | None = None,
        min_responses: int = 1,
    ) -> None:
        self.name = name
        self.index = index
        self.plans = tuple(plans)
        self.reference_prompt = reference_prompt
        self.budget = budget
        self.deadline = deadline
        self.min_responses = min_responses

    @property
    def neurons(self) -> tuple[Neuron, ...]:
        """The layer's neurons (without their fallbacks), in config order."""
        return tuple(plan.neuron for plan in self.plans)

    def _system(self, neuron: Neuron, rendered_refs: str | None) -> str | None:
        parts = [p for p in (neuron.config.prompt, rendered_refs) if p]
        return "\n\n".join(parts) if parts else None

    async def run(
        self,
        history: Sequence[ChatMessage],
        references: Sequence[Reference],
        *,
        origin: float,
        semaphore: asyncio.Semaphore | None = None,
        completed: Sequence[LayerResult] = (),
        on_result: Callable[[NeuronResult], object] | None = None,
    ) -> LayerResult:
        """Run all neurons; raise `AllNeuronsFailed` (with each cause) if none succeeds.

        `on_result` is called with each neuron's result as soon as that neuron finishes.
        """
        start = time.perf_counter()
        references, truncations = await fit_to_budget(
            references, self.budget, self.neurons[0], layer=self.name
        )
        rendered = (
            render(self.reference_prompt, {"responses": format_responses(references)})
            if references
            else None
        )
        history = tuple(history)
        refs = tuple(references)
        states = [CallState() for _ in self.neurons]

        def request_for(neuron: Neuron) -> NeuronRequest:
            return NeuronRequest(
                messages=system_then(self._system(neuron, rendered), history),
                history=history,
                references=refs,
            )

        calls = [
            call_neuron(
                plan,
                request_for,
                layer=self.name,
                index=i,
                origin=origin,
                semaphore=semaphore,
                state=states[i],
            )
            for i, plan in enumerate(self.plans)
        ]
        if on_result is not None:
            calls = [_reporting(call, on_result) for call in calls]
        if self.deadline is None:
            outcomes: list[_Outcome | None] = list(await gather_all(calls))
        else:
            outcomes = await gather_until(
                calls,
                deadline=self.deadline,
                quorum=self.min_responses,
                succeeded=lambda outcome: outcome[1] is not None,
            )
        results: list[NeuronResult] = [
            outcome[0]
            if outcome is not None
            else cut_off(
                self.neurons[i],
                states[i],
                layer=self.name,
                index=i,
                origin=origin,
                deadline=self.deadline or 0.0,
            )
            for i, outcome in enumerate(outcomes)
        ]
        if on_result is not None:  # stragglers cut off by the deadline are reported too
            for outcome, result in zip(outcomes, results, strict=True):
                if outcome is None:
                    on_result(result)
        layer = LayerResult(
            name=self.name,
            index=self.index,
            neurons=tuple(results),
            seconds=time.perf_counter() - start,
            truncations=tuple(truncations),
        )
        if not layer.survivors:
            failures = [o[2] for o in outcomes if o is not None and o[2] is not None]
            raise AllNeuronsFailed(
                f"all {len(self.neurons)} neurons of {self.name} failed: "
                + "; ".join(str(f) for f in failures),
                failures,
                layer=self.name,
                layers=(*completed, layer),
            )
        return layer


async def _reporting(
    call: Coroutine[Any, Any, _Outcome], report: Callable[[NeuronResult], object]
) -> _Outcome:
    outcome = await call
    report(outcome[0])
    return outcome
