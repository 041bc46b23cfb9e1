"""Plugins: a real installed distribution with a `moa` entry point, the allowlist, and errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest

from moa import (
    ConfigError,
    Generation,
    MixtureOfAgents,
    Neuron,
    NeuronConfig,
    NeuronRequest,
    PluginError,
    hookimpl,
    load_config,
)
from moa.plugins import (
    get_neuron_class,
    neuron_types,
    plugin_infos,
    register_plugin,
    reload_plugins,
    unregister_plugin,
)
from moa.testing import FakeProvider

Build = Callable[..., MixtureOfAgents]


@pytest.fixture
def fresh_plugins() -> Iterator[None]:
    reload_plugins()
    yield
    reload_plugins()


def test_builtin_llm_is_registered_like_a_plugin() -> None:
    from moa.neurons.llm import LLMNeuron

    assert get_neuron_class("llm") is LLMNeuron
    builtin = [info for info in plugin_infos() if info.builtin]
    assert [(i.name, i.distribution, i.neuron_types) for i in builtin] == [
        ("moa.eval.builtins", "moa-llm", ()),  # scorers and datasets of `moa eval`
        ("moa.neurons.llm", "moa-llm", ("llm",)),
        ("moa.neurons.vote", "moa-llm", ("vote",)),
    ]


async def test_installed_plugin_type_is_usable_from_yaml(
    echo_plugin: Path, fake: FakeProvider, build: Build
) -> None:
    info = {i.name: i for i in plugin_infos()}["echo"]
    assert (info.distribution, info.version, info.neuron_types, info.builtin) == (
        "moa-echo",
        "0.0.1",
        ("echo",),
        False,
    )
    moa = build("""
    proposal_layers:
      - neurons:
        - {type: echo, prefix: "E1"}
        - {model: "m/llm"}
      - neurons:
        - {type: echo, prefix: "E2", weight: 2}
    aggregation_layer: {model: "m/agg"}
    """)
    result = await moa.process("hello plugins")
    assert result.layers[0].neurons[0].text == "E1: hello plugins (refs=0)"
    assert result.layers[1].neurons[0].text == "E2: hello plugins (refs=2)"
    assert "E2: hello plugins (refs=2)" in (fake.requests_for("m/agg")[0].last_user or "")


def test_plugin_config_is_validated(echo_plugin: Path) -> None:
    with pytest.raises(ConfigError, match=r"proposal_layers\[0\].neurons\[0\].prefix"):
        load_config(
            {
                "proposal_layers": [{"neurons": [{"type": "echo", "prefix": 3}]}],
                "aggregation_layer": {"model": "m"},
            }
        )


def test_allowlist_can_exclude_installed_plugins(
    echo_plugin: Path, monkeypatch: pytest.MonkeyPatch, fresh_plugins: None
) -> None:
    monkeypatch.setenv("MOA_LOAD_PLUGINS", "")
    reload_plugins()
    assert set(neuron_types()) == {"llm", "vote"}  # built-ins always load
    with pytest.raises(ConfigError, match="unknown neuron type 'echo'; installed types: llm, vote"):
        load_config(
            {
                "proposal_layers": [{"neurons": [{"type": "echo"}]}],
                "aggregation_layer": {"model": "m"},
            }
        )
    monkeypatch.setenv("MOA_LOAD_PLUGINS", "moa-echo")
    reload_plugins()
    assert set(neuron_types()) == {"llm", "vote", "echo"}


class Upper(Neuron):
    class Config(NeuronConfig):
        type: Literal["upper"] = "upper"

    async def generate(self, request: NeuronRequest) -> Generation:
        return Generation(text=str(request.history[-1]["content"]).upper())


class UpperPlugin:
    @hookimpl
    def register_neurons(self, register: Callable[[str, type[Neuron]], None]) -> None:
        register("upper", Upper)


async def test_runtime_registration(fake: FakeProvider, build: Build, fresh_plugins: None) -> None:
    plugin = UpperPlugin()
    register_plugin(plugin, name="upper-plugin")
    try:
        moa = build(
            {
                "proposal_layers": [{"neurons": [{"type": "upper"}]}],
                "aggregation_layer": {"type": "upper"},
            }
        )
        result = await moa.process("shout")
        assert result.layers[0].neurons[0].text == "SHOUT"
        assert result.content == "SHOUT"  # the aggregator's history is the user's conversation
    finally:
        unregister_plugin(plugin)
    with pytest.raises(PluginError, match="unknown neuron type 'upper'"):
        get_neuron_class("upper")


def test_misspelled_hook_is_caught(fresh_plugins: None) -> None:
    class Typo:
        @hookimpl
        def register_neuron(self, register: object) -> None:  # missing "s"
            raise AssertionError("never called")

    with pytest.raises(PluginError, match="register_neuron"):
        register_plugin(Typo(), name="typo")


def test_duplicate_type_names_are_refused(fresh_plugins: None) -> None:
    class Clash:
        @hookimpl
        def register_neurons(self, register: Callable[[str, type[Neuron]], None]) -> None:
            register("llm", Upper)

    register_plugin(Clash(), name="clash")
    with pytest.raises(PluginError, match="registered twice"):
        neuron_types()


def test_registering_a_non_neuron_is_refused(fresh_plugins: None) -> None:
    class Wrong:
        @hookimpl
        def register_neurons(self, register: Callable[[str, object], None]) -> None:
            register("wrong", dict)

    register_plugin(Wrong(), name="wrong")
    with pytest.raises(PluginError, match="not a Neuron subclass"):
        neuron_types()
