"""`VoteNeuron` (type `vote`): majority vote over the previous layer's answers, no model call.

As an `aggregation_layer` it turns a mixture into self-consistency: the answer is the most
common extracted answer (`extract: number | choice | normalized | exact`) among the
references, weighted by their weights, and the returned text is the full answer of the
first reference that voted for it (a representative, so the reasoning is kept)::

    aggregation_layer:
      type: vote
      extract: number
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from moa.config import NeuronConfig
from moa.errors import NeuronError
from moa.extract import EXTRACTORS
from moa.hookspecs import RegisterNeuron, hookimpl
from moa.neurons.base import Generation, Neuron, NeuronRequest
from moa.result import Usage

__all__ = ["VoteConfig", "VoteNeuron"]


class VoteConfig(NeuronConfig):
    """Options of a `vote` neuron."""

    type: Literal["vote"] = "vote"
    extract: Literal["number", "choice", "normalized", "exact"] = Field(
        default="normalized",
        description="How an answer is reduced before votes are counted: final number, "
        "multiple-choice letter, normalised text, or the exact stripped text.",
    )


class VoteNeuron(Neuron):
    """Returns the answer most references agree on; ties go to the larger total weight, then
    to the answer given first. With no extractable answer at all, the first reference wins."""

    Config = VoteConfig
    config: VoteConfig

    @property
    def bucket(self) -> None:
        return None  # calls no provider: no rate limit applies

    async def generate(self, request: NeuronRequest) -> Generation:
        references = request.references
        if not references:
            raise NeuronError("vote: there are no answers to vote on", neuron=self.path)
        extract = EXTRACTORS[self.config.extract]
        tally: dict[str, float] = {}
        counts: dict[str, int] = {}
        first: dict[str, int] = {}
        for i, ref in enumerate(references):
            answer = extract(ref.text)
            if answer is None:
                continue
            tally[answer] = tally.get(answer, 0.0) + ref.weight
            counts[answer] = counts.get(answer, 0) + 1
            first.setdefault(answer, i)
        if not tally:
            winner, representative = None, references[0]
        else:
            winner = max(tally, key=lambda a: (tally[a], -first[a]))
            representative = references[first[winner]]
        return Generation(
            text=representative.text,
            usage=Usage(),
            cost=0.0,
            model="vote",
            extra={"answer": winner, "votes": counts},
        )


@hookimpl
def register_neurons(register: RegisterNeuron) -> None:
    register("vote", VoteNeuron)
