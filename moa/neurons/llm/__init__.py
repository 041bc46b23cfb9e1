"""The built-in `llm` neuron: a chat model behind litellm, registered as a default plugin.

Importing this package does not import litellm (it is loaded on `prepare()`).
"""

from __future__ import annotations

from moa.hookspecs import RegisterNeuron, hookimpl
from moa.neurons.llm._neuron import (
    LiteLLMTokenizer,
    LLMConfig,
    LLMNeuron,
    Route,
    classify_exception,
    load_litellm,
    resolve_route,
)

__all__ = [
    "LLMConfig",
    "LLMNeuron",
    "LiteLLMTokenizer",
    "Route",
    "classify_exception",
    "load_litellm",
    "register_neurons",
    "resolve_route",
]


@hookimpl
def register_neurons(register: RegisterNeuron) -> None:
    register("llm", LLMNeuron)
