"""The plugin contract of moa-llm: one hook marker pair and the hooks a plugin may implement.

A plugin is a module (or object) with functions decorated by `moa.hookimpl`. Installed
packages publish such a module under the `moa` entry-point group::

    [project.entry-points.moa]
    my_neurons = "my_package.plugin"

Built-in neurons are registered through the same hook, by `moa.neurons.llm`. Presets
(named, ready-to-run configs such as moa-llamacpp's `local`) come through `register_presets`
the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pluggy

if TYPE_CHECKING:
    from moa.neurons.base import Neuron

__all__ = [
    "RegisterNeuron",
    "RegisterPreset",
    "hookimpl",
    "hookspec",
    "register_neurons",
    "register_presets",
]

_F = TypeVar("_F", bound=Callable[..., Any])

hookspec = pluggy.HookspecMarker("moa")
hookimpl: Callable[[_F], _F] = cast(Callable[[_F], _F], pluggy.HookimplMarker("moa"))

RegisterNeuron = Callable[[str, "type[Neuron]"], None]
"""`register(type_name, neuron_class)`: makes `type: type_name` usable in configs."""


RegisterPreset = Callable[[str, Path], None]
"""`register(name, path_of_a_yaml_config)`: makes a ready-to-run config known by name."""


@hookspec
def register_neurons(register: RegisterNeuron) -> None:
    """Register neuron types by calling `register("name", NeuronSubclass)` once per type."""


@hookspec
def register_presets(register: RegisterPreset) -> None:
    """Register presets by calling `register("name", Path("preset.yaml"))` once per preset.

    `local` is the preset `moa run` uses with no config and no API key."""
