"""Type dispatch: which `NeuronConfig` subclass validates a neuron mapping, by its `type`.

The one link between the config models and the plugin registry: importing `moa.config`
installs `neuron_config_for` as the models' type resolver.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moa.config._models import NeuronConfig, set_type_resolver
from moa.errors import PluginError
from moa.plugins import get_neuron_class, neuron_types

__all__ = ["install", "neuron_config_for", "neuron_config_of"]


def neuron_config_for(type_name: str) -> type[NeuronConfig]:
    """The config class of the installed neuron type `type_name`; `ValueError` (which
    pydantic reports at the key path) listing the installed types if there is none."""
    try:
        return get_neuron_class(type_name).Config
    except PluginError as exc:
        raise ValueError(str(exc)) from None


def neuron_config_of(data: Any) -> type[NeuronConfig]:
    """The config class for a raw neuron mapping, or `NeuronConfig` if its type is unknown."""
    type_name = data.get("type", "llm") if isinstance(data, Mapping) else "llm"
    neuron_cls = neuron_types().get(str(type_name))
    return neuron_cls.Config if neuron_cls is not None else NeuronConfig


def install() -> None:
    """Let `NeuronConfig` validation pick the registered subclass of a neuron's `type`."""
    set_type_resolver(neuron_config_for)
