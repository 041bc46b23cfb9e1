"""The fast path's plan: litellm decides once, per neuron, where and how a call goes.

For the OpenAI provider and litellm's OpenAI-compatible providers, `plan_fast_path()` asks
litellm (passed in: this module does not import it) for the provider, URL and key
(`get_llm_provider`) and for the provider's mapping of the neuron's parameters
(`get_optional_params`). `LLMNeuron` then sends each call itself through `moa.neurons.llm._http`,
skipping litellm's per-call bookkeeping. `MOA_FAST_PATH=0` turns it off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

if TYPE_CHECKING:
    from moa.neurons.llm import LLMConfig, Route

__all__ = ["FastPlan", "field", "plan_fast_path"]


@dataclass(frozen=True)
class FastPlan:
    """A call litellm has resolved once (provider, URL, key, provider-mapped parameters) and
    moa makes itself over a pooled HTTP connection, without litellm's per-call bookkeeping."""

    url: str
    body: dict[str, Any]
    api_key: SecretStr
    provider: str


def plan_fast_path(litellm: ModuleType, config: LLMConfig, route: Route) -> FastPlan | None:
    """The fast-path plan for an OpenAI-compatible provider, or None to stay on litellm."""
    if os.environ.get("MOA_FAST_PATH", "1").lower() in {"0", "false", "no", "off"}:
        return None
    try:
        model, provider, dynamic_key, api_base = litellm.get_llm_provider(
            route.model, api_base=route.api_base
        )
    except Exception:
        return None
    if provider != "openai" and provider not in litellm.openai_compatible_providers:
        return None
    base = route.api_base or api_base
    if base is None and provider == "openai":
        base = os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    key = route.api_key.get_secret_value() if route.api_key is not None else dynamic_key
    if key is None and provider == "openai":
        key = os.environ.get("OPENAI_API_KEY")
    if not base or not key:
        return None
    try:
        params = litellm.get_optional_params(
            model=model,
            custom_llm_provider=provider,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            **config.params,
        )
    except Exception:
        return None  # litellm's own path will report the problem on the call
    params.pop("stream", None)
    extra_body = params.pop("extra_body", None) or {}
    return FastPlan(
        url=base.rstrip("/") + "/chat/completions",
        body={"model": model, **params, **extra_body},
        api_key=SecretStr(key),
        provider=provider,
    )


def field(obj: Any, name: str) -> Any:
    """`obj[name]` for the fast path's dicts, `obj.name` for litellm's objects."""
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
