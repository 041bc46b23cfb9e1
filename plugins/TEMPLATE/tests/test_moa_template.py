"""Tests of the `template` neuron type, using moa's pytest fixtures: no network, no key.

(Name test files uniquely, e.g. test_<your_package>.py: moa-llm's CI collects every
plugin's tests in one run.)
"""

from __future__ import annotations

import pytest
from moa_template import TemplateNeuron

from moa import ConfigError, Settings, create_moa_from_config, load_config
from moa.plugins import get_neuron_class
from moa.testing import FakeNeurons, FakeProvider

# Every test here runs behind moa's network guard (a fixture of the pytest plugin that
# moa-llm installs): any connection outside 127.0.0.1 fails the test.
pytestmark = pytest.mark.usefixtures("moa_network_guard")


def test_the_entry_point_registers_the_type() -> None:
    assert get_neuron_class("template") is TemplateNeuron


async def test_in_a_mixture_with_a_fake_model(
    moa_fake_provider: FakeProvider, moa_settings: Settings
) -> None:
    """Beside an `llm` neuron answered by the loopback fake OpenAI-compatible server."""
    moa_fake_provider.script("meta-llama/Proposer", "Paris.")
    moa_fake_provider.script("meta-llama/Aggregator", "It is Paris.")
    moa = create_moa_from_config(
        {
            "proposal_layers": [
                {"neurons": [{"model": "meta-llama/Proposer"}]},
                {"neurons": [{"type": "template", "greeting": "Bonjour"}]},
            ],
            "aggregation_layer": {"model": "meta-llama/Aggregator"},
        },
        is_file_path=False,
        settings=moa_settings,
    )
    result = await moa.process("Capital of France?")
    assert result.layers[1].neurons[0].text == (
        "Bonjour! You asked: Capital of France? (1 earlier answers)"
    )
    assert result.content == "It is Paris."
    aggregated = moa_fake_provider.requests_for("meta-llama/Aggregator")[0].last_user or ""
    assert "Bonjour! You asked" in aggregated


async def test_with_fake_neurons(moa_fake_neurons: FakeNeurons) -> None:
    """The `fake` type scripts the other neurons without any server."""
    moa = create_moa_from_config(
        {
            "proposal_layers": [{"neurons": [{"type": "template", "shout": True}]}],
            "aggregation_layer": {"type": "fake", "name": "judge"},
        },
        is_file_path=False,
    )
    moa_fake_neurons["judge"].respond_with(lambda request: request.references[0].text)
    result = await moa.process("hi")
    assert result.content == "HELLO! YOU ASKED: HI (0 EARLIER ANSWERS)"


def test_the_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"neurons\[0\]\.greting.*did you mean 'greeting'"):
        load_config(
            {
                "proposal_layers": [{"neurons": [{"type": "template", "greting": "Hi"}]}],
                "aggregation_layer": {"model": "m"},
            }
        )
