"""Published mixture structures, parameterised by model names.

- `together-moa`: 3 proposal layers of the given models (the MoA paper used 6) and an
  aggregator on the first model.
- `moa-lite`: the same with 2 proposal layers.
- `self-moa`: the first model sampled `samples` times (default 6) at temperature 0.7 and
  aggregated by itself (Self-MoA).
- `vote`: the same samples with the `vote` aggregator (self-consistency).

A model name is a litellm model string, `llamacpp` (the local default model of
moa-llamacpp) or a path to a `.gguf` file (a local model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from moa.errors import ConfigError

__all__ = ["PRESETS", "neuron_for", "preset_config"]


def neuron_for(model: str, **options: Any) -> dict[str, Any]:
    """The neuron config of a model name (see the module docstring)."""
    if model == "llamacpp":
        return {"type": "llamacpp", **options}
    if model.endswith(".gguf"):
        return {"type": "llamacpp", "model_path": model, **options}
    return {"model": model, **options}


def _layered(depth: int) -> Callable[..., dict[str, Any]]:
    def build(
        models: Sequence[str], samples: int | None = None, extract: str = "normalized"
    ) -> dict[str, Any]:
        layer = {"neurons": [neuron_for(m, name=f"{m}#{i}") for i, m in enumerate(models)]}
        return {
            "proposal_layers": [layer] * depth,
            "aggregation_layer": neuron_for(models[0], name="aggregator"),
        }

    return build


def _samples(models: Sequence[str], samples: int | None) -> dict[str, Any]:
    n = samples or 6
    model = models[0]
    local = model == "llamacpp" or model.endswith(".gguf")
    neurons = [
        neuron_for(model, name=f"sample{i}", temperature=0.7, **({"seed": i} if local else {}))
        for i in range(n)
    ]
    return {"neurons": neurons}


def _self_moa(
    models: Sequence[str], samples: int | None = None, extract: str = "normalized"
) -> dict[str, Any]:
    return {
        "proposal_layers": [_samples(models, samples)],
        "aggregation_layer": neuron_for(models[0], name="aggregator"),
    }


def _vote(
    models: Sequence[str], samples: int | None = None, extract: str = "normalized"
) -> dict[str, Any]:
    return {
        "proposal_layers": [_samples(models, samples)],
        "aggregation_layer": {"type": "vote", "extract": extract},
    }


PRESETS: dict[str, Callable[..., dict[str, Any]]] = {
    "together-moa": _layered(3),
    "moa-lite": _layered(2),
    "self-moa": _self_moa,
    "vote": _vote,
}


def preset_config(
    name: str, models: Sequence[str], *, samples: int | None = None, extract: str = "normalized"
) -> dict[str, Any]:
    """The config (a mapping, for `load_config`) of preset `name` on `models`."""
    build = PRESETS.get(name)
    if build is None:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    if not models:
        raise ConfigError(f"preset {name!r} needs at least one model: --model NAME")
    return build(list(models), samples=samples, extract=extract)
