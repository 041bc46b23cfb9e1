"""The direct-HTTP transport: litellm decides once, per neuron, where and how a call goes;
moa then makes each call itself.

For the OpenAI provider and litellm's OpenAI-compatible providers, `plan_fast_path()` asks
litellm (passed in: this module does not import it) for the provider, URL and key
(`get_llm_provider`) and for the provider's mapping of the neuron's parameters
(`get_optional_params`). `DirectTransport` then sends each call through `moa.neurons.llm._http`,
skipping litellm's per-call bookkeeping. `MOA_FAST_PATH=0` turns it off.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from moa._redact import remember
from moa.neurons.base import ChatMessage
from moa.neurons.llm import _http
from moa.neurons.llm._transport import Answer, Chunk, content, tokens

if TYPE_CHECKING:
    from moa.neurons.llm._neuron import LLMConfig, Route

__all__ = ["DirectTransport", "FastPlan", "plan_fast_path"]


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
    remember(key)  # masked in upstream text, whoever echoes it
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


class DirectTransport:
    """Calls an OpenAI-compatible endpoint itself, as `plan` says. `_http` maps every failure
    (status, transport, body) into moa's errors; this class reads the JSON shapes."""

    def __init__(self, plan: FastPlan) -> None:
        self.plan = plan

    def _body(self, messages: Sequence[ChatMessage], **extra: Any) -> dict[str, Any]:
        return {**self.plan.body, "messages": [dict(m) for m in messages], **extra}

    async def complete(self, messages: Sequence[ChatMessage], *, timeout_s: float | None) -> Answer:
        data = await _http.post_json(
            self.plan.url, self._body(messages), api_key=self.plan.api_key, timeout_s=timeout_s
        )
        choices = data.get("choices")
        choices = choices if isinstance(choices, list) else []
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        message = first.get("message")
        return Answer(
            text=content(message.get("content") if isinstance(message, dict) else None),
            choices=len(choices),
            usage=_usage(data.get("usage")),
            model=_str(data.get("model")),
        )

    async def stream(
        self, messages: Sequence[ChatMessage], *, timeout_s: float | None
    ) -> AsyncIterator[Chunk]:
        body = self._body(messages, stream=True, stream_options={"include_usage": True})
        async for event in _http.stream_sse(
            self.plan.url, body, api_key=self.plan.api_key, timeout_s=timeout_s
        ):
            choices = event.get("choices")
            first = choices[0] if isinstance(choices, list) and choices else None
            first = first if isinstance(first, dict) else {}
            delta = first.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
            yield Chunk(
                text=text if isinstance(text, str) else None,
                usage=_usage(event.get("usage")),
                model=_str(event.get("model")),
                finished=bool(first.get("finish_reason")),
            )


def _usage(raw: object) -> tuple[int, int] | None:
    if not isinstance(raw, dict):
        return None
    return tokens(raw.get("prompt_tokens"), raw.get("completion_tokens"))


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
