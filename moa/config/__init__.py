"""The configuration of a mixture: pydantic models and how they are loaded.

- `_models`: the pure data models (`MoAConfig` down to `NeuronConfig`); they import nothing
  of the plugin registry.
- `_dispatch`: picks a neuron type's config class by `type`; the one link to the registry.
- `_loading`: `load_config()` from a YAML file, YAML text or a mapping, with `ConfigError`s
  naming the file and key path.
- `_errors`: turns pydantic's errors into what a config author needs.
- `_schema`: JSON Schema over every installed neuron type (`moa schema`).
"""

from moa.config import _dispatch
from moa.config._loading import Source, json_schema, load_config
from moa.config._models import (
    AGGREGATION_PLACEHOLDERS,
    DEFAULT_AGGREGATION_PROMPT,
    DEFAULT_ANNOTATOR_PROMPT,
    DEFAULT_REFERENCE_PROMPT,
    AggregationLayerConfig,
    MoAConfig,
    NeuronConfig,
    ProposalLayerConfig,
    RetryConfig,
)

__all__ = [
    "AGGREGATION_PLACEHOLDERS",
    "DEFAULT_AGGREGATION_PROMPT",
    "DEFAULT_ANNOTATOR_PROMPT",
    "DEFAULT_REFERENCE_PROMPT",
    "AggregationLayerConfig",
    "MoAConfig",
    "NeuronConfig",
    "ProposalLayerConfig",
    "RetryConfig",
    "Source",
    "json_schema",
    "load_config",
]

_dispatch.install()
