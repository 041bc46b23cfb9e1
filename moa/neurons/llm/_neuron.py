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
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, JsonValue, SecretStr

from moa.config._models import NeuronConfig
from moa.errors import (
    InvalidResponseError,
    MissingCredentialsError,
    NeuronError,
    redact,
)
from moa.neurons.base import ChatMessage, Generation, Neuron, NeuronRequest, TokenLimits
from moa.neurons.llm import _http
from moa.neurons.llm._fastpath import FastPlan, field, plan_fast_path
from moa.neurons.llm._providers import LITELLM_PROVIDERS
from moa.neurons.llm._upstream_errors import (
    classify_exception,
    neuron_error,
    reason,
    retry_after_of,
)
from moa.ratelimit import bucket_key
from moa.ratelimit._call import limited
from moa.result import Usage
from moa.settings import Settings

__all__ = [
    "LLMNeuron",
    "LiteLLMTokenizer",
    "Route",
    "classify_exception",
    "load_litellm",
    "resolve_route",
]

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
    params: dict[str, JsonValue] = Field(
        default_factory=dict, description="Extra litellm/provider parameters (top_p, stop...)."
    )
    input_cost_per_token: float | None = Field(
        default=None,
        ge=0,
        description="USD per prompt token, for models litellm has no price for; "
        "setting either price overrides litellm's (an unset one counts as 0).",
    )
    output_cost_per_token: float | None = Field(
        default=None, ge=0, description="USD per completion token (see input_cost_per_token)."
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


class LLMNeuron(Neuron):
    """A chat model. litellm resolves the provider; OpenAI-compatible endpoints are then called
    directly (the fast path, see `plan_fast_path`), every other provider through
    `litellm.acompletion`. Both paths parse, count, price and fail the same way."""

    Config = LLMConfig
    config: LLMConfig

    def __init__(
        self, config: NeuronConfig, *, settings: Settings | None = None, path: str = "neuron"
    ) -> None:
        super().__init__(config, settings=settings, path=path)
        if not isinstance(config, LLMConfig):
            raise TypeError(f"LLMNeuron needs an LLMConfig, got {type(config).__name__}")
        self.route = resolve_route(config, self.settings, where=path)
        # The rate-limit bucket: endpoint (or litellm provider), model, key fingerprint.
        self.bucket = bucket_key(
            self.route.api_base or _provider_prefix(self.route.model) or "litellm",
            self.route.model,
            self.route.api_key.get_secret_value() if self.route.api_key else None,
        )
        self._unpriced = False
        self._plan: FastPlan | object | None = _UNPLANNED

    @property
    def fast_path(self) -> bool:
        """True once prepared, if calls bypass litellm's per-call bookkeeping."""
        return isinstance(self._plan, FastPlan)

    async def prepare(self) -> None:
        if self._plan is _UNPLANNED:
            litellm = await _aload_litellm()
            self._plan = plan_fast_path(litellm, self.config, self.route)

    def _request_kwargs(self, request: NeuronRequest) -> dict[str, Any]:
        """litellm arguments for one attempt, without the API key (see `_complete`)."""
        kwargs: dict[str, Any] = dict(self.config.params)
        kwargs.update(
            model=self.route.model,
            messages=[dict(m) for m in request.messages],
            temperature=self.config.temperature,
            # moa.retry owns retries and the caller bounds each attempt: one attempt here, and
            # an explicit timeout so litellm's hidden 600 s default never applies.
            timeout=self.timeout,
            num_retries=0,
            max_retries=0,
        )
        if self.config.max_tokens is not None:
            kwargs["max_tokens"] = self.config.max_tokens
        if self.route.api_base is not None:
            kwargs["api_base"] = self.route.api_base
        return kwargs

    async def _complete(self, litellm: ModuleType, kwargs: dict[str, Any]) -> Any:
        """Call litellm. The key is read inline, never kept in a local variable: tracebacks
        that capture locals (error trackers) see only the SecretStr."""
        if self.route.api_key is None:
            return await litellm.acompletion(**kwargs)
        return await litellm.acompletion(**kwargs, api_key=self.route.api_key.get_secret_value())

    def _limited(self, request: NeuronRequest) -> Any:
        """The shared rate limit around one upstream attempt (nothing without `rate_limit`)."""
        return limited(
            self.rate_limit,
            self.bucket,
            request.messages,
            max_tokens=self.config.max_tokens,
            attempt_seconds=self.timeout,
        )

    async def generate(self, request: NeuronRequest) -> Generation:
        await self.prepare()
        plan = self._plan
        async with self._limited(request) as permit:
            failure: NeuronError | None = None
            try:
                if isinstance(plan, FastPlan):
                    body = {**plan.body, "messages": [dict(m) for m in request.messages]}
                    response: Any = await _http.post_json(
                        plan.url, body, api_key=plan.api_key, timeout_s=self.timeout
                    )
                else:
                    litellm = await _aload_litellm()
                    response = await self._complete(litellm, self._request_kwargs(request))
            except NeuronError as exc:  # the fast path's own, already in moa's terms
                failure = self._stamped(exc)
            except Exception as exc:
                failure = self._mapped(exc)
            if failure is not None:
                # Raised outside the except block: the new error has no __context__, so the
                # litellm exception (which holds the request, headers included) is not kept.
                raise failure
            generation = await self._parse(response, request)
            if permit is not None and generation.usage is not None:
                usage = generation.usage
                await permit.settle(usage.prompt_tokens + usage.completion_tokens)
            return generation

    async def _chunks(self, request: NeuronRequest) -> AsyncIterator[Any]:
        """Raw stream chunks (dicts on the fast path, litellm objects otherwise), under the
        rate limit for the whole stream."""
        await self.prepare()
        async with self._limited(request) as permit:
            usage: Any = None
            with self._map_errors():  # in moa's terms here, so a 429 pauses the bucket
                async for chunk in self._raw_chunks(request):
                    usage = field(chunk, "usage") or usage
                    yield chunk
            if permit is not None and usage is not None:
                tokens = (field(usage, "prompt_tokens") or 0) + (
                    field(usage, "completion_tokens") or 0
                )
                await permit.settle(int(tokens))

    async def _raw_chunks(self, request: NeuronRequest) -> AsyncIterator[Any]:
        plan = self._plan
        if isinstance(plan, FastPlan):
            body = {
                **plan.body,
                "messages": [dict(m) for m in request.messages],
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            async for event in _http.stream_sse(
                plan.url, body, api_key=plan.api_key, timeout_s=self.timeout
            ):
                yield event
            return
        litellm = await _aload_litellm()
        kwargs = self._request_kwargs(request)
        kwargs.update(stream=True, stream_options={"include_usage": True})
        response = await self._complete(litellm, kwargs)
        try:
            async for chunk in response:
                yield chunk
        finally:
            aclose = getattr(response, "aclose", None)
            if aclose is not None:
                await aclose()

    async def stream(self, request: NeuronRequest) -> AsyncIterator[str | Generation]:
        """Stream with `stream_options.include_usage` (the provider reports usage in its last
        chunk); yield each text delta as it arrives, then the Generation."""
        pieces: list[str] = []
        raw_usage: Any = None
        model: str | None = None
        finished = False
        with self._map_errors():
            async for chunk in self._chunks(request):
                raw_usage = field(chunk, "usage") or raw_usage
                model = model or field(chunk, "model")
                choices = field(chunk, "choices")
                if not choices:  # the include_usage chunk has choices=[]
                    continue
                finished = finished or bool(field(choices[0], "finish_reason"))
                text = field(field(choices[0], "delta"), "content")
                if isinstance(text, str) and text:
                    pieces.append(text)
                    yield text
        text = "".join(pieces)
        if not text.strip():
            raise self._error(InvalidResponseError, "the provider streamed no content")
        if not finished:
            raise self._error(InvalidResponseError, "the stream ended before it was complete")
        usage = await self._usage(raw_usage, request, text)
        yield Generation(text=text, usage=usage, cost=self.cost(usage), model=model)

    async def _parse(self, response: Any, request: NeuronRequest) -> Generation:
        choices = field(response, "choices") or []
        if not choices:
            raise self._error(InvalidResponseError, "the provider returned no choices")
        text = field(field(choices[0], "message"), "content")
        if text is None:
            raise self._error(InvalidResponseError, "the provider returned null content")
        if not isinstance(text, str) or not text.strip():
            raise self._error(InvalidResponseError, "the provider returned empty content")
        usage = await self._usage(field(response, "usage"), request, text)
        return Generation(
            text=text, usage=usage, cost=self.cost(usage), model=field(response, "model")
        )

    async def _usage(self, raw: Any, request: NeuronRequest, text: str) -> Usage:
        """The provider's usage; counted with litellm's tokenizer when the provider sent none."""
        prompt = field(raw, "prompt_tokens")
        completion = field(raw, "completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int) and prompt + completion > 0:
            return Usage(prompt_tokens=prompt, completion_tokens=completion)
        # Off the event loop: a tokenizer may load (or, outside offline mode, download).
        return await asyncio.to_thread(self.count_usage, request.messages, text)

    def count_usage(self, messages: Sequence[ChatMessage], completion: str) -> Usage:
        """Tokens of a call counted by litellm for this model (blocking)."""
        litellm = load_litellm()
        prompt = litellm.token_counter(model=self.route.model, messages=[dict(m) for m in messages])
        completed = litellm.token_counter(model=self.route.model, text=completion)
        return Usage(prompt_tokens=int(prompt), completion_tokens=int(completed))

    def cost(self, usage: Usage | None) -> float | None:
        """USD of one call: the config's prices if set, else litellm's local cost map; None
        for a model litellm does not know (never a made-up 0). Computed once per call from
        usage, so streaming and non-streaming calls are priced the same way."""
        if usage is None:
            return None
        config = self.config
        if config.input_cost_per_token is not None or config.output_cost_per_token is not None:
            return (config.input_cost_per_token or 0.0) * usage.prompt_tokens + (
                config.output_cost_per_token or 0.0
            ) * usage.completion_tokens
        if self._unpriced:
            return None
        try:
            prompt_cost, completion_cost = load_litellm().cost_per_token(
                model=self.route.model,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            )
        except Exception:  # litellm raises for models missing from its map
            self._unpriced = True  # remembered: the lookup and its exception cost ~0.2 ms
            return None
        return float(prompt_cost) + float(completion_cost)

    def tokenizer(self) -> LiteLLMTokenizer:
        return LiteLLMTokenizer(self.route.model)

    def token_limits(self) -> TokenLimits:
        try:
            info = load_litellm().get_model_info(self.route.model)
        except Exception:  # unknown model
            info = {}
        max_input = info.get("max_input_tokens")  # (litellm's max_tokens is ambiguous)
        max_output = self.config.max_tokens or info.get("max_output_tokens")
        return TokenLimits(
            max_input_tokens=max_input if isinstance(max_input, int) else None,
            max_output_tokens=max_output if isinstance(max_output, int) else None,
        )

    def _error(self, cls: type[NeuronError], message: str, **extra: Any) -> NeuronError:
        return cls(message, neuron=self.path, model=self.config.model, **extra)

    @contextmanager
    def _map_errors(self) -> Iterator[None]:
        """Turn litellm/openai exceptions into the moa error tree, with the key redacted
        (for code that cannot use `generate`'s raise-outside-except shape, e.g. streams)."""
        try:
            yield
        except NeuronError as exc:
            raise self._stamped(exc) from None
        except Exception as exc:
            raise self._mapped(exc) from None

    def _stamped(self, exc: NeuronError) -> NeuronError:
        """The fast path's errors come without the neuron's context: add it."""
        exc.model = exc.model or self.config.model
        exc.neuron = exc.neuron or self.path
        return exc

    def _mapped(self, exc: Exception) -> NeuronError:
        """The moa error for a litellm exception, classified by its cause chain (litellm
        reports a refused connection and a non-JSON body as HTTP 500; they are not)."""
        secret = self.route.api_key.get_secret_value() if self.route.api_key else None
        kind, status = classify_exception(exc)
        error = neuron_error(
            kind,
            redact(reason(exc), [secret]),
            status=status if kind not in {"connection", "not_json", "cut_stream"} else None,
            retry_after=retry_after_of(exc),
        )
        return self._stamped(error)

    def __repr__(self) -> str:
        return f"<LLMNeuron {self.path} {self.route.model!r} at {self.route.api_base or 'litellm'}>"


class LiteLLMTokenizer:
    """litellm's tokenizer for a model (tiktoken, or a bundled Hugging Face tokenizer; with
    `LITELLM_OFFLINE_MODE` nothing is downloaded). Blocking: use from a worker thread."""

    def __init__(self, model: str) -> None:
        self.model = model

    def encode(self, text: str) -> list[int]:
        return list(load_litellm().encode(model=self.model, text=text))

    def decode(self, tokens: Sequence[int]) -> str:
        text: str = load_litellm().decode(model=self.model, tokens=list(tokens))
        return text.rstrip("\ufffd")  # a cut inside a multi-byte character

