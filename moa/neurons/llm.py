"""`LLMNeuron`: a chat model behind litellm. The only module that imports litellm (lazily).

Routing: a model with a litellm provider prefix (`openai/`, `anthropic/`, `groq/`,
`ollama/`, `together_ai/`...) goes to litellm as is; a bare name (`meta-llama/...`) goes to
the OpenAI-compatible endpoint `BASE_URL` with `PROVIDER_API_KEY`. A neuron's own `base_url`
sends it to that endpoint instead, and `api_key_env` names the variable holding its key.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, JsonValue, SecretStr

from moa.config import NeuronConfig
from moa.errors import (
    AuthenticationError,
    InvalidResponseError,
    MissingCredentialsError,
    NeuronError,
    ProviderError,
    RateLimitError,
    redact,
)
from moa.errors import TimeoutError as NeuronTimeout
from moa.hookspecs import RegisterNeuron, hookimpl
from moa.neurons import _http
from moa.neurons._providers import LITELLM_PROVIDERS
from moa.neurons.base import Generation, Neuron, NeuronRequest
from moa.result import Usage
from moa.settings import Settings

__all__ = ["LLMNeuron", "Route", "load_litellm", "resolve_route"]

logger = logging.getLogger("moa")

_NO_KEY = "not-needed"  # OpenAI-compatible local servers need some key in the header


class LLMConfig(NeuronConfig):
    """Options of an `llm` neuron."""

    type: Literal["llm"] = "llm"
    model: str = Field(min_length=1, description="litellm model, or a bare name for BASE_URL.")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, gt=0)
    base_url: str | None = Field(
        default=None, pattern=r"^https?://", description="OpenAI-compatible endpoint."
    )
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding this neuron's API key.",
    )
    timeout: float | None = Field(default=None, gt=0, description="Seconds per call.")
    max_retries: int | None = Field(default=None, ge=0, le=10)
    params: dict[str, JsonValue] = Field(
        default_factory=dict, description="Extra litellm/provider parameters (top_p, stop...)."
    )


@dataclass(frozen=True)
class Route:
    """Where and how one neuron's calls go. `api_key` is a SecretStr (hidden in repr)."""

    model: str
    api_base: str | None
    api_key: SecretStr | None
    key_variable: str | None


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _provider_prefix(model: str) -> str | None:
    prefix, sep, _ = model.partition("/")
    return prefix if sep and prefix in LITELLM_PROVIDERS else None


def resolve_route(config: LLMConfig, settings: Settings, *, where: str = "neuron") -> Route:
    """Decide endpoint, model string and key for `config`; raise if a needed key is unset."""
    prefix = _provider_prefix(config.model)
    if config.base_url is None and prefix is not None:
        key = _key_from(
            config.api_key_env, settings, where, required=config.api_key_env is not None
        )
        return Route(config.model, None, key, config.api_key_env)
    api_base = config.base_url or settings.base_url
    model = config.model if prefix is not None else f"openai/{config.model}"
    variable = config.api_key_env or "PROVIDER_API_KEY"
    key = _key_from(variable, settings, where, required=not _is_loopback(api_base))
    return Route(model, api_base, key or SecretStr(_NO_KEY), variable)


def _key_from(
    variable: str | None, settings: Settings, where: str, *, required: bool
) -> SecretStr | None:
    value = settings.secret(variable) if variable else None
    if value:
        return SecretStr(value)
    if required and variable:
        raise MissingCredentialsError(
            f"{where} needs an API key: set {variable} in the environment or in .env.local "
            "(or point base_url at a local server that needs none)",
            variable=variable,
        )
    return None


_litellm: ModuleType | None = None
_litellm_lock = threading.Lock()
_UNPLANNED = object()


def load_litellm() -> ModuleType:
    """Import and configure litellm once: offline cost map, no banners, no .env loading."""
    global _litellm
    with _litellm_lock:
        if _litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
            os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
            import litellm

            litellm.suppress_debug_info = True
            litellm.telemetry = False
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
                lite_logger = logging.getLogger(name)
                for handler in list(lite_logger.handlers):
                    lite_logger.removeHandler(handler)
                lite_logger.addHandler(logging.NullHandler())
                lite_logger.setLevel(logging.WARNING)
            _litellm = litellm
        return _litellm


async def _aload_litellm() -> ModuleType:
    if _litellm is not None:
        return _litellm
    return await asyncio.to_thread(load_litellm)


@dataclass(frozen=True)
class FastPlan:
    """A call litellm has resolved once (provider, URL, key, provider-mapped parameters) and
    moa makes itself over a pooled HTTP connection, without litellm's per-call bookkeeping."""

    url: str
    body: dict[str, Any]
    headers: dict[str, str]
    provider: str
    input_cost: float | None
    output_cost: float | None


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
    input_cost = output_cost = None
    try:
        info = litellm.get_model_info(model=model, custom_llm_provider=provider)
        input_cost = info.get("input_cost_per_token")
        output_cost = info.get("output_cost_per_token")
    except Exception:
        pass  # unknown model: cost stays None, never a made-up 0
    return FastPlan(
        url=base.rstrip("/") + "/chat/completions",
        body={"model": model, **params, **extra_body},
        headers={"Authorization": f"Bearer {key}"},
        provider=provider,
        input_cost=input_cost,
        output_cost=output_cost,
    )


def _usage_of(raw: Any) -> Usage | None:
    if raw is None:
        return None
    get = raw.get if isinstance(raw, dict) else lambda name, _=None: getattr(raw, name, None)
    return Usage(
        prompt_tokens=int(get("prompt_tokens") or 0),
        completion_tokens=int(get("completion_tokens") or 0),
    )


class LLMNeuron(Neuron):
    """A chat model: litellm resolves the provider; OpenAI-compatible endpoints are then called
    directly (the fast path), every other provider through `litellm.acompletion`."""

    Config = LLMConfig
    config: LLMConfig

    def __init__(
        self, config: NeuronConfig, *, settings: Settings | None = None, path: str = "neuron"
    ) -> None:
        super().__init__(config, settings=settings, path=path)
        if not isinstance(config, LLMConfig):
            raise TypeError(f"LLMNeuron needs an LLMConfig, got {type(config).__name__}")
        self.route = resolve_route(config, self.settings, where=path)
        self._timeout = config.timeout or self.settings.request_timeout
        self._retries = (
            config.max_retries if config.max_retries is not None else self.settings.max_retries
        )
        self._plan: FastPlan | object | None = _UNPLANNED

    @property
    def fast_path(self) -> bool:
        """True once prepared, if calls bypass litellm's per-call bookkeeping."""
        return isinstance(self._plan, FastPlan)

    async def _generate_fast(self, plan: FastPlan, request: NeuronRequest) -> Generation:
        secret = self.route.api_key.get_secret_value() if self.route.api_key else None
        body = {**plan.body, "messages": [dict(m) for m in request.messages]}
        try:
            data = await _http.post_json(
                plan.url, body, plan.headers, timeout_s=self._timeout, secrets=[secret or ""]
            )
        except NeuronError as exc:
            exc.model = self.config.model
            exc.neuron = exc.neuron or self.path
            raise
        choices = data.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            raise self._error(InvalidResponseError, "the provider returned no choices")
        text = (choices[0].get("message") or {}).get("content")
        if not isinstance(text, str) or not text.strip():
            raise self._error(InvalidResponseError, "the provider returned empty content")
        usage = _usage_of(data.get("usage"))
        cost = None
        if usage is not None and plan.input_cost is not None and plan.output_cost is not None:
            cost = (
                usage.prompt_tokens * plan.input_cost
                + usage.completion_tokens * plan.output_cost
            )
        return Generation(text=text, usage=usage, cost=cost, model=data.get("model"))

    async def prepare(self) -> None:
        if self._plan is _UNPLANNED:
            litellm = await _aload_litellm()
            self._plan = plan_fast_path(litellm, self.config, self.route)

    async def generate(self, request: NeuronRequest) -> Generation:
        if self._plan is _UNPLANNED:
            await self.prepare()
        if isinstance(self._plan, FastPlan):
            return await self._generate_fast(self._plan, request)
        litellm = await _aload_litellm()
        kwargs: dict[str, Any] = dict(self.config.params)
        kwargs.update(
            model=self.route.model,
            messages=[dict(m) for m in request.messages],
            temperature=self.config.temperature,
            timeout=self._timeout,
            num_retries=self._retries,
            max_retries=0,
        )
        if self.config.max_tokens is not None:
            kwargs["max_tokens"] = self.config.max_tokens
        if self.route.api_base is not None:
            kwargs["api_base"] = self.route.api_base
        if self.route.api_key is not None:
            kwargs["api_key"] = self.route.api_key.get_secret_value()
        with self._map_errors():
            response = await litellm.acompletion(**kwargs)
        return self._parse(response)

    def _parse(self, response: Any) -> Generation:
        choices = getattr(response, "choices", None) or []
        if not choices:
            raise self._error(InvalidResponseError, "the provider returned no choices")
        message = getattr(choices[0], "message", None)
        text = getattr(message, "content", None)
        if not isinstance(text, str) or not text.strip():
            raise self._error(InvalidResponseError, "the provider returned empty content")
        usage = _usage_of(getattr(response, "usage", None))
        hidden = getattr(response, "_hidden_params", None) or {}
        cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
        return Generation(
            text=text,
            usage=usage,
            cost=float(cost) if isinstance(cost, (int, float)) else None,
            model=getattr(response, "model", None),
        )

    def _error(self, cls: type[NeuronError], message: str, **extra: Any) -> NeuronError:
        return cls(message, neuron=self.path, model=self.config.model, **extra)

    @contextmanager
    def _map_errors(self) -> Iterator[None]:
        """Turn litellm/openai exceptions into the moa error tree, with the key redacted."""
        try:
            yield
        except NeuronError:
            raise
        except Exception as exc:
            raise self._mapped(exc) from None

    def _mapped(self, exc: Exception) -> NeuronError:
        secret = self.route.api_key.get_secret_value() if self.route.api_key else None
        message = redact(f"{type(exc).__name__}: {exc}", [secret])
        status = getattr(exc, "status_code", None)
        status = status if isinstance(status, int) else None
        name = type(exc).__name__
        if name == "RateLimitError" or status == 429:
            return self._error(
                RateLimitError, message, status_code=status or 429, retry_after=_retry_after(exc)
            )
        if name in {"AuthenticationError", "PermissionDeniedError"} or status in {401, 403}:
            return self._error(AuthenticationError, message, status_code=status)
        if name in {"Timeout", "APITimeoutError"} or isinstance(exc, asyncio.TimeoutError):
            return self._error(NeuronTimeout, message, status_code=status)
        return self._error(ProviderError, message, status_code=status)

    def __repr__(self) -> str:
        return f"<LLMNeuron {self.path} {self.route.model!r} at {self.route.api_base or 'litellm'}>"


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms") is not None:
            return float(headers["retry-after-ms"]) / 1000.0
        if headers.get("retry-after") is not None:
            return float(headers["retry-after"])
    except (TypeError, ValueError):
        return None
    return None


@hookimpl
def register_neurons(register: RegisterNeuron) -> None:
    register("llm", LLMNeuron)
