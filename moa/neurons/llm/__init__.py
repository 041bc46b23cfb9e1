"""The built-in `llm` neuron: a chat model behind litellm, registered as a default plugin.

- `_neuron`: `LLMNeuron`, its config and routing (which endpoint, which key);
- `_transport`: the internal transport interface (`complete`, `stream`) and its normalised
  `Answer` / `Chunk`;
- `_direct` (+ `_http`): the direct-HTTP transport for OpenAI-compatible endpoints;
- `_litellm`: the litellm transport, and the only module here that imports litellm;
- `_upstream_errors`: the one failure-kind table, and `upstream_text()`, the one place where
  upstream text becomes moa text (secrets redacted before any truncation);
- `_providers`: litellm's provider prefixes, as a snapshot.

Importing this package does not import litellm (it is loaded on `prepare()`).
"""

from __future__ import annotations

from moa.hookspecs import RegisterNeuron, hookimpl
from moa.neurons.llm._litellm import classify_exception, load_litellm
from moa.neurons.llm._neuron import LiteLLMTokenizer, LLMConfig, LLMNeuron, Route, resolve_route

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
