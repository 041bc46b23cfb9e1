"""The systems `moa eval` compares, each an ordinary mixture config built from the user's.

- `mixture`: the config as given.
- `single`: each distinct neuron of its proposal layers alone (same prompt, temperature and
  params), its answer passed through a one-reference `vote` aggregator (no extra call).
- `self_moa`: the best single sampled as many times as the mixture's first layer is wide (at
  the sample temperature, with a different seed per sample where the neuron type has one),
  aggregated by the same model with the mixture's aggregation prompt (Self-MoA).
- `vote`: the same samples, majority over the scorer's extracted answer (self-consistency).
- `oracle`: not run; any sample of the vote system scored correct (an upper bound).
- `config`: any other config given with `-c`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from moa.config import MoAConfig, NeuronConfig, load_config

__all__ = ["Kind", "System", "identity", "sampled_systems", "single_systems"]

Kind = Literal["mixture", "single", "self_moa", "vote", "config", "oracle"]

_TOP_KEYS = ("max_concurrency", "timeout", "retry")


@dataclass(frozen=True)
class System:
    """One system under evaluation: a name, its kind and the mixture config that runs it
    (None for the oracle, which is computed from the vote system's samples)."""

    name: str
    kind: Kind
    config: MoAConfig | None
    neuron: NeuronConfig | None = None

    @property
    def fingerprint(self) -> str:
        """A short hash of what the system runs (its run file is named after it)."""
        dumped = self.config.model_dump(mode="json") if self.config is not None else None
        raw = json.dumps([self.kind, dumped], sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


def identity(neuron: NeuronConfig) -> str:
    """What makes two neurons the same model call: their options, label and weight aside."""
    dumped = neuron.model_dump(mode="json", exclude={"name", "weight", "fallbacks"})
    return json.dumps(dumped, sort_keys=True, default=str)


def _top(config: MoAConfig) -> dict[str, Any]:
    dumped = config.model_dump(mode="json")
    return {k: dumped[k] for k in _TOP_KEYS if dumped.get(k) is not None}


def _vote(extract: str) -> dict[str, Any]:
    return {"type": "vote", "name": "vote", "extract": extract}


def _neuron_dict(neuron: NeuronConfig, **change: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = neuron.model_dump(mode="json", exclude={"weight"})
    dumped.update(change)
    return dumped


def single_systems(config: MoAConfig, extract: str) -> list[System]:
    """One `single` system per distinct neuron of the proposal layers, in config order."""
    seen: set[str] = set()
    systems = []
    names: dict[str, int] = {}
    for layer in config.proposal_layers:
        for neuron in layer.neurons:
            key = identity(neuron)
            if key in seen:
                continue
            seen.add(key)
            name = neuron.label
            names[name] = names.get(name, 0) + 1
            if names[name] > 1:
                name = f"{name}#{names[name]}"
            single = load_config(
                {
                    **_top(config),
                    "proposal_layers": [{"neurons": [_neuron_dict(neuron)]}],
                    "aggregation_layer": _vote(extract),
                }
            )
            systems.append(System(name, "single", single, neuron))
    return systems


def _sample(neuron: NeuronConfig, index: int, temperature: float | None) -> dict[str, Any]:
    fields = type(neuron).model_fields
    change: dict[str, Any] = {"name": f"{neuron.label}@{index}"}
    if temperature is not None and "temperature" in fields:
        change["temperature"] = temperature
    if "seed" in fields:
        base = getattr(neuron, "seed", None)
        change["seed"] = (base or 0) + index
    return _neuron_dict(neuron, **change)


def sampled_systems(
    config: MoAConfig,
    best: System,
    *,
    width: int | None,
    temperature: float | None,
    extract: str,
    kinds: tuple[str, ...] = ("self_moa", "vote"),
) -> list[System]:
    """Self-MoA and vote on `best` (a single): `width` samples (default: the width of the
    mixture's first layer) at `temperature` (default: the neuron's own)."""
    assert best.neuron is not None
    n = width if width is not None else len(config.proposal_layers[0].neurons)
    samples = [_sample(best.neuron, i, temperature) for i in range(n)]
    agg = config.aggregation_layer
    aggregator = _neuron_dict(best.neuron, name=f"{best.neuron.label}-aggregator")
    if agg.neuron.prompt is not None:
        aggregator["prompt"] = agg.neuron.prompt
    aggregator.pop("fallbacks", None)
    systems = []
    if "self_moa" in kinds:
        self_moa = load_config(
            {
                **_top(config),
                "proposal_layers": [{"neurons": samples}],
                "aggregation_layer": {**aggregator, "aggregation_prompt": agg.aggregation_prompt},
            }
        )
        systems.append(System(f"self-moa({best.name} x{n})", "self_moa", self_moa, best.neuron))
    if "vote" in kinds:
        vote = load_config(
            {**_top(config), "proposal_layers": [{"neurons": samples}],
             "aggregation_layer": _vote(extract)}
        )  # fmt: skip
        systems.append(System(f"vote({best.name} x{n})", "vote", vote, best.neuron))
    return systems
