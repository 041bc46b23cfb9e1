"""The plugin contract of moa-llm: one hook marker pair and the hooks a plugin may implement.

A plugin is a module (or object) with functions decorated by `moa.hookimpl`. Installed
packages publish such a module under the `moa` entry-point group::

    [project.entry-points.moa]
    my_neurons = "my_package.plugin"

Built-in neurons are registered through the same hook, by `moa.neurons.llm`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pluggy

if TYPE_CHECKING:
    from moa.eval.data import EvalItem
    from moa.eval.scorers import Scorer
    from moa.neurons.base import Neuron

__all__ = [
    "RegisterDataset",
    "RegisterNeuron",
    "RegisterScorer",
    "hookimpl",
    "hookspec",
    "register_datasets",
    "register_neurons",
    "register_scorers",
]

_F = TypeVar("_F", bound=Callable[..., Any])

hookspec = pluggy.HookspecMarker("moa")
hookimpl: Callable[[_F], _F] = cast(Callable[[_F], _F], pluggy.HookimplMarker("moa"))

RegisterNeuron = Callable[[str, "type[Neuron]"], None]
"""`register(type_name, neuron_class)`: makes `type: type_name` usable in configs."""


@hookspec
def register_neurons(register: RegisterNeuron) -> None:
    """Register neuron types by calling `register("name", NeuronSubclass)` once per type."""


RegisterDataset = Callable[[str, "Callable[[], Iterable[EvalItem]]", str], None]
"""`register(name, loader, description)`: makes `moa eval --dataset name` load `loader()`."""


@hookspec
def register_datasets(register: RegisterDataset) -> None:
    """Register evaluation datasets by calling `register("name", loader, "what it is")`; the
    loader is called only when the dataset is used and yields `moa.eval.EvalItem`s."""


RegisterScorer = Callable[[str, "Callable[..., Scorer]"], None]
"""`register(name, factory)`: makes `moa eval --scorer name` use `factory(**options)`."""


@hookspec
def register_scorers(register: RegisterScorer) -> None:
    """Register scorers by calling `register("name", factory)`; `factory(**options)` returns a
    `moa.eval.Scorer` (options come from `--scorer name:key=value,...`)."""
