"""`Layer`: run every neuron of a proposal layer concurrently and collect the survivors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from moa._template import render
from moa.errors import AllNeuronsFailed, NeuronError
from moa.layers._call import call_neuron, format_responses, gather_all, system_then
from moa.neurons.base import ChatMessage, Neuron, NeuronRequest, Reference
from moa.result import LayerResult, NeuronResult

__all__ = ["Layer", "references_from"]


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


class Layer:
    """Neurons that answer in parallel. From the second layer on, each neuron's system prompt
    is followed by `reference_prompt` with every surviving answer of the previous layer."""

    def __init__(
        self, name: str, index: int, neurons: Sequence[Neuron], reference_prompt: str
    ) -> None:
        self.name = name
        self.index = index
        self.neurons = tuple(neurons)
        self.reference_prompt = reference_prompt

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
    ) -> LayerResult:
        """Run all neurons; raise `AllNeuronsFailed` (with each cause) if none succeeds."""
        start = time.perf_counter()
        rendered = (
            render(self.reference_prompt, {"responses": format_responses(references)})
            if references
            else None
        )
        history = tuple(history)
        refs = tuple(references)
        calls = [
            call_neuron(
                neuron,
                NeuronRequest(
                    messages=system_then(self._system(neuron, rendered), history),
                    history=history,
                    references=refs,
                ),
                layer=self.name,
                index=i,
                origin=origin,
                semaphore=semaphore,
            )
            for i, neuron in enumerate(self.neurons)
        ]
        outcomes = await gather_all(calls)
        results: list[NeuronResult] = [result for result, _, _ in outcomes]
        layer = LayerResult(
            name=self.name,
            index=self.index,
            neurons=tuple(results),
            seconds=time.perf_counter() - start,
        )
        if not layer.survivors:
            failures: list[NeuronError] = [f for _, _, f in outcomes if f is not None]
            raise AllNeuronsFailed(
                f"all {len(self.neurons)} neurons of {self.name} failed: "
                + "; ".join(str(f) for f in failures),
                failures,
                layer=self.name,
                layers=(*completed, layer),
            )
        return layer
