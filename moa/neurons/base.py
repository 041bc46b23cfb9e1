"""The `Neuron` base class: one abstract async method, `generate`, and a nested `Config`.

A neuron knows nothing of layers or mixtures. It receives a `NeuronRequest` (the chat to
send, already carrying its system prompt and the previous layer's answers) and returns a
`Generation`. Per-request state stays out of `self`: one neuron serves concurrent requests.

Failures a caller should survive are raised as `moa.errors.NeuronError` subclasses; any other
exception is treated as a bug and propagates.
"""

from __future__ import annotations

import inspect
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Self

from moa.config._models import NeuronConfig
from moa.errors import ConfigError
from moa.ratelimit import RateLimit, bucket_key
from moa.result import Usage
from moa.settings import Settings

__all__ = [
    "ChatMessage",
    "Generation",
    "Neuron",
    "NeuronRequest",
    "Reference",
    "TokenLimits",
    "Tokenizer",
    "WordTokenizer",
]

ChatMessage = Mapping[str, str]
"""A chat turn: `{"role": "system" | "user" | "assistant", "content": str}`."""


@dataclass(frozen=True)
class Reference:
    """One answer of the previous layer, as later layers and the aggregator see it."""

    text: str
    weight: float
    label: str
    path: str


@dataclass(frozen=True)
class NeuronRequest:
    """What a neuron is asked.

    `messages` is the full chat to send (system prompt first, if any). `history` is the
    conversation without the neuron's own system prompt, and `references` the previous
    layer's surviving answers, for neurons that want to use them directly. `timeout` is the
    seconds this attempt may take (the caller enforces it too; a neuron that talks to a
    server can pass it on, e.g. as its socket timeout), None when the caller sets none.
    """

    messages: tuple[ChatMessage, ...]
    history: tuple[ChatMessage, ...] = ()
    references: tuple[Reference, ...] = ()
    timeout: float | None = None


@dataclass(frozen=True)
class Generation:
    """A neuron's answer. `usage` and `cost` are None when unknown (never a made-up 0)."""

    text: str
    usage: Usage | None = None
    cost: float | None = None
    model: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)


class Tokenizer(Protocol):
    """Turns text into a model's tokens and back; used to fit context budgets.

    Methods may block (load a vocabulary, encode long text): moa calls them in a worker
    thread, never on the event loop.
    """

    def encode(self, text: str) -> Sequence[int]: ...

    def decode(self, tokens: Sequence[int]) -> str: ...


_PIECES = re.compile(r"\S+\s*|\s+")


class WordTokenizer:
    """A model-free fallback for neuron types without a tokenizer: one token per word
    (with its trailing whitespace). `decode(encode(t)[:n])` is a prefix of `t`."""

    def __init__(self) -> None:
        self._pieces: dict[int, str] = {}
        self._ids: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in _PIECES.findall(text):
            token = self._ids.get(piece)
            if token is None:
                token = self._ids[piece] = len(self._ids)
                self._pieces[token] = piece
            ids.append(token)
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        return "".join(self._pieces[t] for t in tokens)


@dataclass(frozen=True)
class TokenLimits:
    """A model's context window and longest answer, in tokens; None when unknown."""

    max_input_tokens: int | None = None
    max_output_tokens: int | None = None


class Neuron(ABC):
    """Base class of every neuron type.

    Subclasses set `Config` to a `NeuronConfig` subclass whose `type` field is a `Literal` of
    the registered type name, and implement `generate`; `__init__(config)` checks that the
    config is a `Config`. `prepare` (once, before the first call), `bind` and `aclose` are
    optional hooks.

    How a neuron is *called* is the caller's business, the same for every type: the mixture
    bounds each attempt by a timeout (passed in `NeuronRequest.timeout` too), retries
    retryable failures under its retry policy and tries the neuron's fallbacks when it fails
    for good. A neuron makes one attempt per `generate` call and never retries by itself.
    """

    Config: ClassVar[type[NeuronConfig]] = NeuronConfig

    def __init__(
        self,
        config: NeuronConfig,
        *,
        settings: Settings | None = None,
        path: str | None = None,
    ) -> None:
        if settings is not None or path is not None:
            warnings.warn(
                f"{type(self).__name__}: Neuron.__init__(config, *, settings, path) is "
                "deprecated and will be removed in the next release; take only the config "
                "(moa passes settings and path to bind())",
                DeprecationWarning,
                stacklevel=2,
            )
        if not isinstance(config, self.Config):
            raise TypeError(
                f"{type(self).__name__} needs a {self.Config.__name__}, "
                f"got {type(config).__name__}"
            )
        self.config = config
        self._settings = settings
        self.path = path if path is not None else "neuron"
        # Limits of this neuron's bucket (see `bucket`), shared with every caller of that
        # bucket: the config's, or the mixture's top-level default. moa applies it around
        # each attempt, whatever the neuron type; a neuron never applies it itself.
        self.rate_limit: RateLimit | None = config.rate_limit

    @classmethod
    def create(cls, config: NeuronConfig, *, settings: Settings, path: str) -> Self:
        """How moa builds a neuron: `cls(config)`, then `bind(settings=..., path=...)`. A
        `ConfigError` raised on the way (a bad option found at setup) is given the neuron's
        key path if it does not name it already.

        A subclass whose `__init__` still names `settings` or `path` (the old signature) is
        given them as before; it works, with a `DeprecationWarning`.
        """
        try:
            if cls.__init__ is not Neuron.__init__ and _takes_old_keywords(cls.__init__):
                neuron = cls(config, settings=settings, path=path)
            else:
                neuron = cls(config)
            neuron.bind(settings=settings, path=path)
        except ConfigError as exc:
            if type(exc) is not ConfigError or str(exc).startswith(path):
                raise
            raise ConfigError(f"{path}: {exc}", source=exc.source, errors=exc.errors) from exc
        return neuron

    def bind(self, *, settings: Settings, path: str) -> None:
        """Called by moa once, right after construction: the settings in force and where the
        neuron sits (its key path, used in errors and traces). Override it (calling super
        first) to set up what needs them, and raise a `MoAError` for what cannot work, so it
        fails when the mixture is built rather than on the first call."""
        self._settings = settings
        self.path = path

    @property
    def settings(self) -> Settings:
        """The settings in force (from `bind`; default: read from the environment)."""
        if self._settings is None:
            self._settings = Settings()
        return self._settings

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def weight(self) -> float:
        return self.config.weight

    @property
    def bucket(self) -> str | None:
        """The shared rate-limit bucket this neuron's calls draw from (see `moa.ratelimit`):
        every attempt waits for a slot of it when a `rate_limit` is in force. None: the
        neuron calls no provider (it votes, or runs a model in this process), so no
        `rate_limit`, not even the top-level default, applies to it.

        Default: `bucket_key(type, model, key)`: the neuron type, its `model` option (else
        its label) and a fingerprint of the first key `required_secrets()` names, so neurons
        of one type calling one model with one key share a bucket. Override it to name the
        service you call more precisely (an endpoint), or to return None."""
        model = getattr(self.config, "model", None)
        secrets = self.required_secrets()
        return bucket_key(
            self.config.type,
            model if isinstance(model, str) else self.label,
            self.settings.secret(secrets[0]) if secrets else None,
        )

    async def prepare(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Called once before the first `generate` (e.g. to load a client or a model)."""

    @abstractmethod
    async def generate(self, request: NeuronRequest) -> Generation:
        """Answer `request`; raise a `NeuronError` subclass on an expected failure."""

    async def stream(self, request: NeuronRequest) -> AsyncIterator[str | Generation]:
        """Answer `request` incrementally: yield text deltas (`str`) as they arrive, then
        exactly one final `Generation` with the whole text, usage and cost.

        The default calls `generate()` and yields its text in one piece; neurons that can
        stream for real override this.
        """
        generation = await self.generate(request)
        yield generation.text
        yield generation

    def required_secrets(self) -> Sequence[str]:
        """Names of the variables (environment, `.env.local`, `.env`) holding the keys this
        neuron needs, read with `self.settings.secret(name)`. `moa validate --check-keys`
        reports each one that is unset, and moa redacts their values from the network
        errors it words itself. Default: none."""
        return ()

    def tokenizer(self) -> Tokenizer | None:
        """The tokenizer of this neuron's model, for context budgets; None (the default)
        falls back to `WordTokenizer`. May block: called in a worker thread."""
        return None

    def token_limits(self) -> TokenLimits:
        """Context window and longest answer of this neuron, for the context-window check
        made before the first call. May block: called in a worker thread."""
        return TokenLimits()

    async def aclose(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Release resources (clients, models)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} {self.label!r}>"


def _takes_old_keywords(init: object) -> bool:
    """Whether an `__init__` declares `settings` or `path` (the deprecated signature)."""
    try:
        parameters = inspect.signature(init).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return "settings" in parameters or "path" in parameters
