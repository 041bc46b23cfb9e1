"""The `Neuron` base class: `__init__(config)` checks the config itself, moa binds settings and
path, the call plan's timeout reaches the neuron in its request, and a plugin written against
the old `__init__(config, *, settings, path)` signature still works, with a warning."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import ClassVar, Literal

import pytest

from moa import (
    Generation,
    Neuron,
    NeuronConfig,
    NeuronRequest,
    Settings,
    create_moa_from_config,
    hookimpl,
)
from moa.neurons.base import ChatMessage
from moa.plugins import register_plugin, unregister_plugin
from moa.retry import RetryPolicy


class Recorder(Neuron):
    """The simple form: a Config and `generate`, no `__init__`."""

    class Config(NeuronConfig):
        type: Literal["recorder"] = "recorder"

    seen: ClassVar[list[tuple[str, float | None]]] = []

    async def generate(self, request: NeuronRequest) -> Generation:
        self.seen.append((self.path, request.timeout))
        return Generation(text=f"{self.path} answered")


class OldStyle(Neuron):
    """Written against the old signature, repeating the config check, as plugins used to."""

    class Config(NeuronConfig):
        type: Literal["oldstyle"] = "oldstyle"

    def __init__(
        self, config: NeuronConfig, *, settings: Settings | None = None, path: str = "neuron"
    ) -> None:
        super().__init__(config, settings=settings, path=path)
        if not isinstance(config, OldStyle.Config):
            raise TypeError("OldStyle needs its Config")
        self.built_with = (settings, path)

    async def generate(self, request: NeuronRequest) -> Generation:
        return Generation(text=f"old {self.path}")


class Plugin:
    @hookimpl
    def register_neurons(self, register: Callable[[str, type[Neuron]], None]) -> None:
        register("recorder", Recorder)
        register("oldstyle", OldStyle)


@pytest.fixture(autouse=True)
def plugin() -> Iterator[None]:
    instance = Plugin()
    register_plugin(instance, name="neuron-base-test")
    Recorder.seen.clear()
    try:
        yield
    finally:
        unregister_plugin(instance)


HI: tuple[ChatMessage, ...] = ({"role": "user", "content": "hi"},)


def test_init_checks_the_config_type() -> None:
    with pytest.raises(TypeError, match="Recorder needs a Config, got Config"):
        Recorder(OldStyle.Config())
    neuron = Recorder(Recorder.Config())
    assert neuron.path == "neuron" and isinstance(neuron.settings, Settings)


async def test_the_plan_timeout_reaches_the_neuron_in_its_request() -> None:
    moa = create_moa_from_config(
        {
            "timeout": 7,
            "retry": {"max_retries": 1},
            "proposal_layers": [
                {"neurons": [{"type": "recorder"}, {"type": "recorder", "timeout": 3}]}
            ],
            "aggregation_layer": {"type": "recorder"},
        },
        settings=Settings(),
    )
    result = await moa.process("q")
    assert result.content == "aggregation_layer answered"
    assert sorted(Recorder.seen) == [
        ("aggregation_layer", 7.0),
        ("proposal_layers[0].neurons[0]", 7.0),
        ("proposal_layers[0].neurons[1]", 3.0),
    ]
    first = moa.layers[0].plans[0]
    assert (first.timeout, first.retry.max_retries, first.fallbacks) == (7.0, 1, ())
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.timeout = 1  # type: ignore[misc]
    assert isinstance(first.retry, RetryPolicy)


async def test_a_plugin_with_the_old_signature_still_works_with_a_warning() -> None:
    settings = Settings()
    with pytest.warns(DeprecationWarning, match=r"Neuron.__init__\(config, \*, settings, path\)"):
        moa = create_moa_from_config(
            {
                "proposal_layers": [{"neurons": [{"type": "oldstyle"}]}],
                "aggregation_layer": {"type": "oldstyle"},
            },
            settings=settings,
        )
    neuron = moa.layers[0].neurons[0]
    assert isinstance(neuron, OldStyle)
    assert neuron.built_with == (settings, "proposal_layers[0].neurons[0]")
    assert neuron.settings is settings and neuron.path == "proposal_layers[0].neurons[0]"
    result = await moa.process("q")
    assert result.content == "old aggregation_layer"
    assert result.layers[0].neurons[0].text == "old proposal_layers[0].neurons[0]"


def test_the_simple_form_builds_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        moa = create_moa_from_config(
            {
                "proposal_layers": [{"neurons": [{"type": "recorder"}]}],
                "aggregation_layer": {"type": "recorder"},
            },
        )
    assert moa.aggregation.neuron.path == "aggregation_layer"


async def test_a_neuron_called_directly_sees_no_timeout_unless_given() -> None:
    neuron = Recorder(Recorder.Config())
    await neuron.generate(NeuronRequest(messages=HI))
    await neuron.generate(NeuronRequest(messages=HI, timeout=2.5))
    assert Recorder.seen == [("neuron", None), ("neuron", 2.5)]
