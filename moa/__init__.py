"""moa-llm: a Mixture of Agents over LLMs.

    from moa import create_moa_from_config
    moa = create_moa_from_config("moa_config.yaml")
    result = await moa.process("Why is the sky blue?")
    print(result["content"])

    async for text in moa.stream_text("Why is the sky blue?"):   # or moa.stream(): events
        print(text, end="", flush=True)

Importing this package reads no file, touches no network and does not import litellm.
"""

from moa.config import (
    AggregationLayerConfig,
    MoAConfig,
    NeuronConfig,
    ProposalLayerConfig,
    RateLimit,
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
    RateLimiterUnavailable,
    SpendLimitExceeded,
    TimeoutError,  # noqa: A004 - the documented name of moa's timeout error
)
from moa.events import (
    AggregationStarted,
    AnnotatorFinished,
    Completed,
    LayerFinished,
    LayerStarted,
    MoAEvent,
    MoAEventAdapter,
    NeuronFinished,
    StreamFailed,
    Token,
)
from moa.hookspecs import hookimpl
from moa.mixture import ContextWindowWarning, MixtureOfAgents, create_moa_from_config
from moa.neurons.base import (
    Generation,
    Neuron,
    NeuronRequest,
    Reference,
    Tokenizer,
    TokenLimits,
)
from moa.neurons.loop_local import LoopLocal
from moa.result import LayerResult, MoAResult, NeuronResult, Truncation, Usage
from moa.settings import Settings

__all__ = [
    "AggregationFailed",
    "AggregationLayerConfig",
    "AggregationStarted",
    "AllNeuronsFailed",
    "AnnotatorFinished",
    "AuthenticationError",
    "Completed",
    "ConfigError",
    "ContextWindowWarning",
    "Generation",
    "InvalidResponseError",
    "LayerFinished",
    "LayerResult",
    "LayerStarted",
    "LoopLocal",
    "MissingCredentialsError",
    "MixtureOfAgents",
    "MoAConfig",
    "MoAError",
    "MoAEvent",
    "MoAEventAdapter",
    "MoAResult",
    "Neuron",
    "NeuronConfig",
    "NeuronError",
    "NeuronFinished",
    "NeuronRequest",
    "NeuronResult",
    "PluginError",
    "ProposalLayerConfig",
    "ProviderConnectionError",
    "ProviderError",
    "QueryError",
    "RateLimit",
    "RateLimitError",
    "RateLimiterUnavailable",
    "Reference",
    "RetryConfig",
    "Settings",
    "SpendLimitExceeded",
    "StreamFailed",
    "TimeoutError",
    "Token",
    "TokenLimits",
    "Tokenizer",
    "Truncation",
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
