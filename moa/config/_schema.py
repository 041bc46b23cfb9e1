"""JSON Schema of a config file over every installed neuron type (`moa schema`)."""

from __future__ import annotations

from typing import Any

from moa.config._models import MoAConfig

__all__ = ["config_json_schema"]


def config_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a config file, with every installed neuron type.

    Wherever a neuron goes (annotator, each layer's neurons, the aggregator) the schema is a
    union discriminated by `type` over the installed types' `Config` models; `type` may be
    left out only for the default `llm`. The aggregator's schema puts the neuron keys beside
    `aggregation_prompt`, `shuffle` and `dropout_rate`, as they are written in YAML.
    """
    from pydantic.json_schema import models_json_schema

    from moa.plugins import neuron_types

    types = sorted(neuron_types().items())
    keys, schema = models_json_schema(
        [(MoAConfig, "validation"), *((cls.Config, "validation") for _, cls in types)],
        ref_template="#/$defs/{model}",
    )
    defs: dict[str, Any] = schema["$defs"]
    aggregation = defs["AggregationLayerConfig"]
    own = {k: v for k, v in aggregation["properties"].items() if k != "neuron"}
    neuron_refs: dict[str, str] = {}
    aggregator_refs: dict[str, str] = {}
    for name, cls in types:
        ref = keys[(cls.Config, "validation")]["$ref"]
        variant = defs[ref.rsplit("/", 1)[-1]]
        properties = variant.setdefault("properties", {})
        properties["type"] = {**properties.get("type", {}), "const": name}
        required = [r for r in variant.get("required", []) if r != "type"]
        variant["required"] = required if name == "llm" else ["type", *required]
        neuron_refs[name] = ref
        aggregator_name = f"AggregationLayerConfig_{name}"
        defs[aggregator_name] = {
            **variant,
            "title": f"Aggregation layer ({name} neuron)",
            "properties": {**properties, **own},
        }
        aggregator_refs[name] = f"#/$defs/{aggregator_name}"

    def union(refs: dict[str, str], description: str) -> dict[str, Any]:
        return {
            "description": description,
            "oneOf": [{"$ref": ref} for ref in refs.values()],
            "discriminator": {"propertyName": "type", "mapping": refs},
        }

    defs["NeuronConfig"] = union(
        neuron_refs, f"A neuron; 'type' selects one of: {', '.join(neuron_refs)} (default llm)."
    )
    defs["AggregationLayerConfig"] = union(aggregator_refs, str(aggregation.get("description")))
    root = defs.pop("MoAConfig")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **root,
        "title": "moa-llm config",
        "$defs": dict(sorted(defs.items())),
    }
