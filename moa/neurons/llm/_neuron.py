"""`LLMNeuron`: a chat model, called through one of two transports (see `_transport`).

Routing: a model with a litellm provider prefix (`openai/`, `anthropic/`, `groq/`,
`ollama/`, `together_ai/`...) goes to litellm as is; a bare name (`meta-llama/...`) goes to
the OpenAI-compatible endpoint `BASE_URL` with `PROVIDER_API_KEY`. A neuron's own `base_url`
sends it to that endpoint instead, and `api_key_env` names the variable holding its key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, JsonValue, SecretStr

from moa._redact import StreamRedactor, redact, remember
from moa._runner import to_thread
from moa.config._models import NeuronConfig
from moa.errors import InvalidResponseError, MissingCredentialsError, NeuronError
from moa.neurons.base import ChatMessage, Generation, Neuron, NeuronRequest, TokenLimits
from moa.neurons.llm import _litellm as _litellm_transport
from moa.neurons.llm._direct import DirectTransport, plan_fast_path
from moa.neurons.llm._litellm import LiteLLMTransport, aload_litellm, load_litellm
from moa.neurons.llm._providers import providers
from moa.neurons.llm._transport import Answer, Transport
from moa.ratelimit import bucket_key
from moa.result import Usage
from moa.settings import Settings

__all__ = ["LLMConfig", "LLMNeuron", "LiteLLMTokenizer", "Route", "resolve_route"]

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
    """The litellm provider `model` names, judged by the loaded litellm if it is loaded."""
    prefix, sep, _ = model.partition("/")
    return prefix if sep and prefix in providers(_litellm_transport._litellm) else None


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
        remember(value)  # masked in any upstream text from now on, whichever call echoes it
        return SecretStr(value)
    if required and variable:
        raise MissingCredentialsError(
            f"{where} needs an API key: set {variable} in the environment or in .env.local "
            "(or point base_url at a local server that needs none)",
            variable=variable,
        )
    return None


class LLMNeuron(Neuron):
    """A chat model. litellm resolves the provider; at `prepare()` the neuron picks its
    transport once: OpenAI-compatible endpoints are called directly (`DirectTransport`, the
    fast path), every other provider through `litellm.acompletion` (`LiteLLMTransport`).
    Both answer in the same normalised shapes and fail with the same errors; the neuron
    checks, counts and prices the same way whichever made the call."""

    Config = LLMConfig
    config: LLMConfig

    _route: Route | None = None
    _transport: Transport | None = None
    _unpriced = False

    def bind(self, *, settings: Settings, path: str) -> None:
        super().bind(settings=settings, path=path)
        # resolved now, so a missing key fails when the mixture is built
        self._route = resolve_route(self.config, settings, where=path)

    @property
    def route(self) -> Route:
        """Where this neuron's calls go (resolved with `settings` on first use if not bound)."""
        if self._route is None:
            self._route = resolve_route(self.config, self.settings, where=self.path)
        return self._route

    def _timeout(self, request: NeuronRequest) -> float:
        """This attempt's timeout: the caller's (in the request), else the neuron's own
        config, else the settings' (litellm's hidden 600 s default never applies)."""
        if request.timeout is not None:
            return request.timeout
        return self.config.timeout or self.settings.request_timeout

    @property
    def bucket(self) -> str:
        """The rate-limit bucket: endpoint (or litellm provider), model, key fingerprint (moa
        holds a slot of it around each attempt, see `moa.layers._call.attempt`)."""
        route = self.route
        return bucket_key(
            route.api_base or _provider_prefix(route.model) or "litellm",
            route.model,
            route.api_key.get_secret_value() if route.api_key else None,
        )

    @property
    def fast_path(self) -> bool:
        """True once prepared, if calls bypass litellm's per-call bookkeeping."""
        return isinstance(self._transport, DirectTransport)

    async def prepare(self) -> None:
        if self._transport is None:
            litellm = await aload_litellm()
            plan = plan_fast_path(litellm, self.config, self.route)
            self._transport = (
                DirectTransport(plan)
                if plan is not None
                else LiteLLMTransport(litellm, self.config, self.route)
            )

    async def _ready(self) -> Transport:
        await self.prepare()
        assert self._transport is not None
        return self._transport

    async def generate(self, request: NeuronRequest) -> Generation:
        transport = await self._ready()
        failure: NeuronError | None = None
        try:
            answer = await transport.complete(request.messages, timeout_s=self._timeout(request))
        except NeuronError as exc:
            self._stamp(exc)
            failure = exc
        if failure is not None:
            # With no traceback below this frame: the transports' frames held raw upstream
            # text in their locals, and error trackers capture frame locals.
            raise failure.with_traceback(None)
        return await self._generation(answer, request)

    async def stream(self, request: NeuronRequest) -> AsyncIterator[str | Generation]:
        """Stream with `stream_options.include_usage` (the provider reports usage in its last
        chunk); yield each text delta as it arrives, then the Generation.

        The answer is upstream text: deltas are masked as they arrive (`StreamRedactor` holds
        back a delta's end while it could still start a key), and a failure is raised with no
        traceback below this frame (see `generate`)."""
        transport = await self._ready()
        redactor = StreamRedactor([self._secret()])
        pieces: list[str] = []
        usage: tuple[int, int] | None = None
        model: str | None = None
        finished = False
        chunks = aiter(transport.stream(request.messages, timeout_s=self._timeout(request)))
        try:
            while True:
                failure: NeuronError | None = None
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except NeuronError as exc:
                    self._stamp(exc)
                    failure = exc
                if failure is not None:
                    raise failure.with_traceback(None)
                usage = chunk.usage or usage
                model = model or chunk.model
                finished = finished or chunk.finished
                text = redactor.feed(chunk.text) if chunk.text else ""
                del chunk  # no raw delta in a local while waiting for the next
                if text:
                    pieces.append(text)
                    yield text
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        rest = redactor.flush()
        if rest:
            pieces.append(rest)
            yield rest
        model = redact(model) if model is not None else None
        text = "".join(pieces)
        if not text.strip():
            raise self._error(InvalidResponseError, "the provider streamed no content")
        if not finished:
            raise self._error(InvalidResponseError, "the stream ended before it was complete")
        counted = await self._usage(usage, request, text)
        yield Generation(text=text, usage=counted, cost=self.cost(counted), model=model)

    async def _generation(self, answer: Answer, request: NeuronRequest) -> Generation:
        if not answer.choices:
            raise self._error(InvalidResponseError, "the provider returned no choices")
        if answer.text is None:
            raise self._error(InvalidResponseError, "the provider returned null content")
        if not answer.text.strip():
            raise self._error(InvalidResponseError, "the provider returned empty content")
        text = redact(answer.text, [self._secret()])  # the answer is upstream text too
        usage = await self._usage(answer.usage, request, text)
        model = redact(answer.model) if answer.model is not None else None
        return Generation(text=text, usage=usage, cost=self.cost(usage), model=model)

    def _secret(self) -> str | None:
        """This neuron's key, for masking (read inline by callers, never kept)."""
        if isinstance(self._transport, DirectTransport):
            return self._transport.plan.api_key.get_secret_value()
        return self.route.api_key.get_secret_value() if self.route.api_key else None

    async def _usage(
        self, reported: tuple[int, int] | None, request: NeuronRequest, text: str
    ) -> Usage:
        """The provider's usage; counted with litellm's tokenizer when the provider sent none."""
        if reported is not None:
            return Usage(prompt_tokens=reported[0], completion_tokens=reported[1])
        # Off the event loop: a tokenizer may load (or, outside offline mode, download).
        return await to_thread(self.count_usage, request.messages, text)

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

    def _stamp(self, exc: NeuronError) -> None:
        """The transports' errors come without the neuron's context: add it."""
        exc.model = exc.model or self.config.model
        exc.neuron = exc.neuron or self.path

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
