"""`UserQueryAnnotator`: rewrites the last user turn before the first proposal layer."""

from __future__ import annotations

from collections.abc import Sequence

from moa.config import DEFAULT_ANNOTATOR_PROMPT
from moa.layers._call import CallPlan, call_neuron
from moa.layers._prompts import system_then
from moa.neurons.base import ChatMessage, Neuron, NeuronRequest
from moa.result import NeuronResult

__all__ = ["UserQueryAnnotator"]


class UserQueryAnnotator:
    """Asks its neuron to rewrite the query. If the call fails, the original query is used
    and the failure is recorded in the trace (an optional step never sinks the answer)."""

    def __init__(self, plan: CallPlan) -> None:
        self.plan = plan

    @property
    def neuron(self) -> Neuron:
        """The annotator's neuron (its fallbacks are in `plan`)."""
        return self.plan.neuron

    async def annotate(
        self, history: Sequence[ChatMessage], *, origin: float
    ) -> tuple[NeuronResult, str | None]:
        """Return the trace entry and the rewritten query (None if the call failed)."""

        def request_for(neuron: Neuron) -> NeuronRequest:
            system = neuron.config.prompt or DEFAULT_ANNOTATOR_PROMPT
            return NeuronRequest(messages=system_then(system, history), history=tuple(history))

        result, generation, _ = await call_neuron(
            self.plan, request_for, layer="annotator", index=0, origin=origin
        )
        if generation is None:
            return result, None
        return result, generation.text.strip() or None
