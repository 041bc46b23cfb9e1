"""moa-llm: a Mixture of Agents over LLMs.

    from moa import create_moa_from_config
    moa = create_moa_from_config("moa_config.yaml")
    result = await moa.process("Why is the sky blue?")
    print(result["content"])

Importing this package reads no file, touches no network and does not import litellm.
"""

from moa.config import (
    AggregationLayerConfig,
    MoAConfig,
    NeuronConfig,
    ProposalLayerConfig,
    RetryConfig,
    load_config,
)
from moa.errors import (
    AggregationFailed,
    AllNeuronsFailed,
    AuthenticationError,
    ConfigError,
    InvalidResponseError,
    MissingCredentialsError,
    MoAError,
    NeuronError,
    PluginError,
    ProviderConnectionError,
    ProviderError,
    QueryError,
    RateLimitError,
    TimeoutError,  # noqa: A004 - the documented name of moa's timeout error
)
from moa.hookspecs import hookimpl
from moa.mixture import MixtureOfAgents, create_moa_from_config
from moa.neurons.base import Generation, Neuron, NeuronRequest, Reference
from moa.result import LayerResult, MoAResult, NeuronResult, Usage
from moa.settings import Settings

__all__ = [
    "AggregationFailed",
    "AggregationLayerConfig",
    "AllNeuronsFailed",
    "AuthenticationError",
    "ConfigError",
    "Generation",
    "InvalidResponseError",
    "LayerResult",
    "MissingCredentialsError",
    "MixtureOfAgents",
    "MoAConfig",
    "MoAError",
    "MoAResult",
    "Neuron",
    "NeuronConfig",
    "NeuronError",
    "NeuronRequest",
    "NeuronResult",
    "PluginError",
    "ProposalLayerConfig",
    "ProviderConnectionError",
    "ProviderError",
    "QueryError",
    "RateLimitError",
    "Reference",
    "RetryConfig",
    "Settings",
    "TimeoutError",
    "Usage",
    "__version__",
    "create_moa_from_config",
    "hookimpl",
    "load_config",
]

__version__ = "0.1.0"

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = "moa"
del _name, _obj
