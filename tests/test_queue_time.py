"""`NeuronResult.queued_seconds`: the part of a call spent waiting for a shared model, as the
neuron reports it in `Generation.extra["queued_seconds"]` (local models do)."""

from __future__ import annotations

from moa import Generation, create_moa_from_config
from moa.testing import FakeNeurons


async def test_queue_time_reported_by_a_neuron_reaches_the_trace(
    moa_fake_neurons: FakeNeurons,
) -> None:
    moa = create_moa_from_config(
        {
            "proposal_layers": [
                {"neurons": [{"type": "fake", "name": "waited"}, {"type": "fake", "name": "plain"}]}
            ],
            "aggregation_layer": {"type": "fake", "name": "judge"},
        },
        is_file_path=False,
    )
    moa_fake_neurons["waited"].enqueue(Generation(text="a", extra={"queued_seconds": 0.25}))
    result = await moa.process("q")
    waited, plain = result.layers[0].neurons
    assert waited.queued_seconds == 0.25
    assert plain.queued_seconds is None  # not reported: unknown, not 0
    assert result.aggregator.queued_seconds is None
    assert result.model_dump()["layers"][0]["neurons"][0]["queued_seconds"] == 0.25
