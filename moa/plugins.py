"""The plugin manager: built-in neurons, then installed plugins of the `moa` entry-point group.

Plugins load once, on the first registry lookup (never on `import moa`). The environment
variable `MOA_LOAD_PLUGINS` is an allowlist of entry-point or distribution names separated by
commas; unset loads every installed plugin, an empty string loads none (built-ins always load).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import pluggy

from moa import hookspecs
from moa.errors import PluginError

if TYPE_CHECKING:
    from moa.neurons.base import Neuron

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "get_neuron_class",
    "get_plugin_manager",
    "neuron_types",
    "plugin_infos",
    "register_plugin",
    "reload_plugins",
    "unregister_plugin",
]

ENTRY_POINT_GROUP = "moa"
DEFAULT_PLUGINS: tuple[str, ...] = ("moa.neurons.llm", "moa.neurons.vote", "moa.eval.builtins")


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin: its name, where it came from and the neuron types it adds."""

    name: str
    distribution: str | None
    version: str | None
    neuron_types: tuple[str, ...]
    builtin: bool


_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_dists: dict[str, tuple[str | None, str | None]] = {}
_types: dict[str, type[Neuron]] | None = None
_origins: dict[str, str] = {}


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, loading plugins on first use."""
    global _manager
    with _lock:
        if _manager is None:
            pm = pluggy.PluginManager("moa")
            pm.add_hookspecs(hookspecs)
            for module_name in DEFAULT_PLUGINS:
                pm.register(importlib.import_module(module_name), name=module_name)
            _load_entry_points(pm)
            _check(pm)
            _manager = pm
        return _manager


def _allowlist() -> set[str] | None:
    raw = os.environ.get("MOA_LOAD_PLUGINS")
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = _allowlist()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        if allowed is not None and ep.name not in allowed and dist not in allowed:
            continue
        if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} (distribution {dist or '?'}) failed to import "
                f"{ep.value!r}: {type(exc).__name__}: {exc}"
            ) from exc
        pm.register(plugin, name=ep.name)
        _dists[ep.name] = (dist, version)


def _check(pm: pluggy.PluginManager) -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {exc.plugin!r} implements a hook moa does not define "
            f"(known hooks: register_datasets, register_neurons, register_scorers): {exc}"
        ) from exc


def _collect_types() -> dict[str, type[Neuron]]:
    from moa.neurons.base import Neuron

    pm = get_plugin_manager()
    types: dict[str, type[Neuron]] = {}
    origins: dict[str, str] = {}
    for impl in pm.hook.register_neurons.get_hookimpls():
        plugin_name = impl.plugin_name

        def register(name: str, cls: type[Neuron], _plugin: str = plugin_name) -> None:
            if not isinstance(cls, type) or not issubclass(cls, Neuron):
                raise PluginError(
                    f"plugin {_plugin!r} registered {name!r} with {cls!r}, not a Neuron subclass"
                )
            if name in types and types[name] is not cls:
                raise PluginError(
                    f"neuron type {name!r} is registered twice: "
                    f"by {origins[name]!r} and by {_plugin!r}"
                )
            types[name] = cls
            origins[name] = _plugin

        impl.function(register=register)
    _origins.clear()
    _origins.update(origins)
    return types


def neuron_types() -> dict[str, type[Neuron]]:
    """Map each installed neuron type name to its class."""
    global _types
    with _lock:
        if _types is None:
            _types = _collect_types()
        return dict(_types)


def get_neuron_class(type_name: str) -> type[Neuron]:
    """The class registered as `type_name`; `PluginError` listing the known types if none."""
    types = neuron_types()
    try:
        return types[type_name]
    except KeyError:
        known = ", ".join(sorted(types)) or "none"
        raise PluginError(f"unknown neuron type {type_name!r}; installed types: {known}") from None


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object or module at run time (e.g. a neuron class defined in a script)."""
    global _types
    with _lock:
        pm = get_plugin_manager()
        registered = pm.register(plugin, name=name)
        if registered is None:
            raise PluginError(f"plugin {name or plugin!r} is already registered or blocked")
        _check(pm)
        _types = None
        return registered


def unregister_plugin(name_or_plugin: str | object) -> None:
    """Undo `register_plugin()`."""
    global _types
    with _lock:
        pm = get_plugin_manager()
        if isinstance(name_or_plugin, str):
            pm.unregister(name=name_or_plugin)
        else:
            pm.unregister(plugin=name_or_plugin)
        _types = None


def plugin_infos() -> list[PluginInfo]:
    """Describe every registered plugin (for `moa plugins` and debugging)."""
    types = neuron_types()
    pm = get_plugin_manager()
    infos = []
    for name, plugin in pm.list_name_plugin():
        if name is None:
            continue
        dist, version = _dists.get(name, (None, None))
        builtin = isinstance(plugin, ModuleType) and name in DEFAULT_PLUGINS
        if builtin:
            dist, version = "moa-llm", _own_version()
        owned = tuple(sorted(t for t in types if _origins.get(t) == name))
        infos.append(PluginInfo(name, dist, version, owned, builtin))
    return sorted(infos, key=lambda info: (not info.builtin, info.name))


def _own_version() -> str | None:
    try:
        return importlib.metadata.version("moa-llm")
    except importlib.metadata.PackageNotFoundError:
        return None


def reload_plugins() -> None:
    """Forget every loaded plugin; the next lookup loads built-ins and entry points again
    (e.g. after installing a plugin package in a running process)."""
    global _manager, _types
    with _lock:
        _manager = None
        _types = None
        _dists.clear()
        _origins.clear()
