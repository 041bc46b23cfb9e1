"""OpenTelemetry GenAI semantic conventions: the attribute names moa sets and the mapping from
a neuron's config, a `Generation` and a failure to attributes. Pure: imports no OpenTelemetry.

Names follow the GenAI conventions (Development status, v1.37+: `gen_ai.provider.name`, and
content as `gen_ai.input.messages` / `gen_ai.output.messages` JSON). moa's own attributes
use the `moa.` prefix. No attribute ever holds an API key: a config's key is never read here,
and a `base_url` contributes only its host and port.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from moa.neurons.base import ChatMessage, Generation, Neuron

__all__ = [
    "CHAT",
    "INVOKE_AGENT",
    "call_attributes",
    "input_messages",
    "output_messages",
    "provider_name",
    "response_attributes",
    "system_instructions",
]

OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
AGENT_NAME = "gen_ai.agent.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
RESPONSE_MODEL = "gen_ai.response.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
CONTENT_EVENT = "gen_ai.client.inference.operation.details"
COST = "moa.cost_usd"

CHAT = "chat"
INVOKE_AGENT = "invoke_agent"

# litellm provider prefixes whose well-known `gen_ai.provider.name` differs from the prefix.
_PROVIDER_NAMES: Mapping[str, str] = {
    "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "bedrock": "aws.bedrock",
    "gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai",
    "mistral": "mistral_ai",
    "watsonx": "ibm.watsonx.ai",
    "xai": "x_ai",
}


def provider_name(neuron: Neuron) -> str:
    """`gen_ai.provider.name` of a neuron: its litellm provider for an `llm` neuron with a
    provider prefix, `openai` for a bare model sent to an OpenAI-compatible endpoint, else the
    neuron type (`llamacpp`, `function`...)."""
    config = neuron.config
    if config.type != "llm":
        return config.type
    model = getattr(config, "model", "")
    prefix, sep, _ = str(model).partition("/")
    if sep and getattr(config, "base_url", None) is None:
        from moa.neurons.llm._providers import LITELLM_PROVIDERS

        if prefix in LITELLM_PROVIDERS:
            return _PROVIDER_NAMES.get(prefix, prefix)
    return "openai"


def _endpoint(neuron: Neuron) -> str | None:
    """The OpenAI-compatible endpoint an `llm` neuron without a provider prefix calls."""
    config = neuron.config
    if config.type != "llm":
        return None
    base_url = getattr(config, "base_url", None)
    if base_url:
        return str(base_url)
    if provider_name(neuron) == "openai" and not str(getattr(config, "model", "")).startswith(
        "openai/"
    ):
        return neuron.settings.base_url
    return None


def call_attributes(neuron: Neuron) -> dict[str, Any]:
    """The request attributes of a `chat` span for a call of `neuron` (known before it)."""
    config = neuron.config
    model = getattr(config, "model", None)
    attributes: dict[str, Any] = {
        OPERATION: CHAT,
        PROVIDER: provider_name(neuron),
        REQUEST_MODEL: str(model) if isinstance(model, str) else neuron.label,
        "moa.neuron.path": neuron.path,
        "moa.neuron.label": neuron.label,
        "moa.neuron.type": config.type,
    }
    temperature = getattr(config, "temperature", None)
    if isinstance(temperature, (int, float)):
        attributes[REQUEST_TEMPERATURE] = float(temperature)
    max_tokens = getattr(config, "max_tokens", None)
    if isinstance(max_tokens, int):
        attributes[REQUEST_MAX_TOKENS] = max_tokens
    endpoint = _endpoint(neuron)
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.hostname:  # host and port only: never userinfo, path or query
            attributes[SERVER_ADDRESS] = parts.hostname
            try:
                port = parts.port
            except ValueError:
                port = None
            port = port or (443 if parts.scheme == "https" else 80)
            attributes[SERVER_PORT] = port
    return attributes


def response_attributes(generation: Generation) -> dict[str, Any]:
    """What a successful call adds: response model, tokens and cost (where known)."""
    attributes: dict[str, Any] = {}
    if generation.model:
        attributes[RESPONSE_MODEL] = generation.model
    if generation.usage is not None:
        attributes[INPUT_TOKENS] = generation.usage.prompt_tokens
        attributes[OUTPUT_TOKENS] = generation.usage.completion_tokens
    if generation.cost is not None:
        attributes[COST] = generation.cost
    return attributes


def _parts(text: str) -> list[dict[str, str]]:
    return [{"type": "text", "content": text}]


def system_instructions(messages: Sequence[ChatMessage]) -> str:
    """`gen_ai.system_instructions` (JSON) from the system turns of `messages`."""
    parts = [p for m in messages if m.get("role") == "system" for p in _parts(m["content"])]
    return json.dumps(parts, ensure_ascii=False)


def input_messages(messages: Sequence[ChatMessage]) -> str:
    """`gen_ai.input.messages` (JSON): the non-system turns of `messages`."""
    turns = [
        {"role": m["role"], "parts": _parts(m["content"])}
        for m in messages
        if m.get("role") != "system"
    ]
    return json.dumps(turns, ensure_ascii=False)


def output_messages(text: str) -> str:
    """`gen_ai.output.messages` (JSON): one assistant answer."""
    answer = {"role": "assistant", "parts": _parts(text), "finish_reason": "stop"}
    return json.dumps([answer], ensure_ascii=False)
