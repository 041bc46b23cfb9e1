"""What `moa validate` checks beyond the schema, calling nothing.

Every neuron of a config (annotator, proposers, aggregator, each fallback) is built the way a
run builds it, so an error a neuron type raises when it is constructed (a plugin's
`ConfigError` in `__init__`) shows at validation instead of at the first request. With
`check_keys`, every key a neuron needs must be set: the ones a neuron checks when it is built
(the `llm` type's) and the ones it declares with `Neuron.required_secrets()`.
"""

from __future__ import annotations

from collections.abc import Iterator

from moa.config import MoAConfig, NeuronConfig
from moa.errors import ConfigError, MissingCredentialsError, MoAError, PluginError
from moa.layers.aggregation import LAYER_NAME
from moa.plugins import get_neuron_class
from moa.settings import Settings

__all__ = ["check_config", "neuron_configs"]


def neuron_configs(config: MoAConfig) -> Iterator[tuple[NeuronConfig, str]]:
    """Every neuron config of `config` with its key path, fallbacks included."""
    if config.use_annotator and config.annotator is not None:
        yield from _with_fallbacks(config.annotator, "annotator")
    for i, layer in enumerate(config.proposal_layers):
        for j, neuron in enumerate(layer.neurons):
            yield from _with_fallbacks(neuron, f"proposal_layers[{i}].neurons[{j}]")
    aggregation = config.aggregation_layer
    yield from _with_fallbacks(aggregation.neuron, LAYER_NAME)
    if aggregation.fallback_model is not None:
        derived = aggregation.neuron.derive(aggregation.fallback_model)
        yield derived, f"{LAYER_NAME}.fallback_model"


def _with_fallbacks(config: NeuronConfig, path: str) -> Iterator[tuple[NeuronConfig, str]]:
    yield config, path
    for i, fallback in enumerate(config.fallback_configs()):
        yield fallback, f"{path}.fallbacks[{i}]"


def check_config(
    config: MoAConfig, settings: Settings | None = None, *, check_keys: bool = False
) -> list[MoAError]:
    """The problems of `config` found by building each of its neurons (none: it is valid).

    A missing key counts only with `check_keys`. Exceptions other than `ConfigError` /
    `PluginError` (bugs in a neuron type) propagate.
    """
    settings = settings if settings is not None else Settings()
    problems: list[MoAError] = []
    for neuron_config, path in neuron_configs(config):
        try:
            kind = get_neuron_class(neuron_config.type)
            neuron = kind.create(neuron_config, settings=settings, path=path)
        except MissingCredentialsError as exc:
            if check_keys:
                problems.append(exc)
            continue
        except (ConfigError, PluginError) as exc:
            problems.append(exc)
            continue
        if not check_keys:
            continue
        for name in neuron.required_secrets():
            if not settings.secret(name):
                problems.append(
                    MissingCredentialsError(
                        f"{path} ({neuron.label}, type {neuron_config.type}) needs {name}: "
                        "set it in the environment or in .env.local",
                        variable=name,
                    )
                )
    return problems
