"""`moa.testing` test doubles: the `fake` neuron type and its fixture, for users' own tests."""

from __future__ import annotations

import pytest

from moa import (
    AggregationFailed,
    ConfigError,
    Generation,
    NeuronRequest,
    ProviderError,
    Usage,
    create_moa_from_config,
)
from moa.plugins import neuron_types
from moa.testing import FakeNeurons, fake_neurons

CONFIG = {
    "proposal_layers": [
        {
            "neurons": [
                {"type": "fake", "name": "a", "replies": ["from config"]},
                {"type": "fake", "name": "b", "weight": 2},
            ]
        }
    ],
    "aggregation_layer": {"type": "fake", "name": "judge", "prompt": "Judge."},
}


async def test_scripted_answers_and_recorded_requests(moa_fake_neurons: FakeNeurons) -> None:
    moa = create_moa_from_config(CONFIG, is_file_path=False)
    moa_fake_neurons["b"].enqueue("b says hi", ProviderError("b is down"))

    async def judge(request: NeuronRequest) -> str:
        return " + ".join(ref.text for ref in request.references)

    moa_fake_neurons["judge"].respond_with(judge)

    first = await moa.process("question one")
    assert [n.text for n in first.layers[0].neurons] == ["from config", "b says hi"]
    assert first.content == "b says hi + from config"  # weight order

    second = await moa.process("question two")
    assert second.layers[0].neurons[1].error_type == "ProviderError"
    assert second.layers[0].neurons[0].text == "fake answer from a"  # queue used up
    assert second.content == "fake answer from a"

    judged = moa_fake_neurons["judge"].history
    assert [r.history[-1]["content"] for r in judged] == ["question one", "question two"]
    assert judged[0].messages[0] == {"role": "system", "content": "Judge."}
    assert len(moa_fake_neurons) == 3


async def test_scripted_generations_and_failures_reach_the_trace(
    moa_fake_neurons: FakeNeurons,
) -> None:
    moa = create_moa_from_config(CONFIG, is_file_path=False)
    counted = Generation(text="x", usage=Usage(prompt_tokens=5, completion_tokens=2))
    moa_fake_neurons["a"].queue.clear()
    moa_fake_neurons["a"].enqueue(counted)
    moa_fake_neurons["judge"].enqueue(ProviderError("judge down"))
    with pytest.raises(AggregationFailed) as caught:
        await moa.process("q")
    assert caught.value.proposals == ["x", "fake answer from b"]
    assert caught.value.layers[0].neurons[0].usage == counted.usage


def test_the_type_exists_only_while_registered() -> None:
    assert "fake" not in neuron_types()
    with fake_neurons() as fakes:
        assert neuron_types()["fake"] is fakes.neuron_class
        with pytest.raises(KeyError, match="0 fake neurons are labelled 'nobody'"):
            fakes["nobody"]
    assert "fake" not in neuron_types()
    with pytest.raises(ConfigError, match="unknown neuron type 'fake'"):
        create_moa_from_config(CONFIG, is_file_path=False)


def test_leaving_after_a_plugin_reload_is_clean() -> None:
    from moa.plugins import reload_plugins

    with fake_neurons():
        reload_plugins()  # e.g. a test installed a plugin meanwhile
    assert "fake" not in neuron_types()
