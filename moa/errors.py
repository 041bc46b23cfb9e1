"""Every exception moa-llm raises on purpose, in one place.

```
MoAError
├── ConfigError                 a config is invalid (names the file and the key path)
│   └── MissingCredentialsError an API key a neuron needs is not set (names the variable)
├── PluginError                 a plugin failed to load, or a neuron type is unknown
├── QueryError                  the query passed to process() has no user turn or a bad shape
├── NeuronError                 one call failed (carries neuron, layer, index, model,
│   │                           status_code, attempts and retry_after)
│   ├── ProviderError           the provider answered with an error (status_code says which)
│   │   ├── ProviderConnectionError  could not connect, or the connection dropped (retried)
│   │   └── InvalidResponseError     2xx without usable text: no choices, null or empty
│   │                                content, a body that is not JSON, a cut-off stream
│   ├── RateLimitError          429 (carries retry_after when the provider said; retried)
│   ├── AuthenticationError     401 / 403 (never retried)
│   └── TimeoutError            no answer in time, or 408 (retried; also a builtins.TimeoutError)
├── AllNeuronsFailed            every neuron of a layer failed (an ExceptionGroup of the causes)
├── AggregationFailed           the aggregator and its fallbacks failed; the proposals are kept
├── SpendLimitExceeded          a query reached max_cost_per_query; the layers it paid for are kept
└── RateLimiterUnavailable      the shared rate limiter's Redis (MOA_REDIS_URL) cannot be used
```

Which `NeuronError`s are retried is decided in one place, `moa.retry.is_retryable()`: rate
limits, timeouts, connection failures and HTTP 408 / 409 / 5xx; never 400 / 401 / 403 / 404 /
422 and never a 2xx with unusable content.

`ConfigError` and `PluginError` are mistakes in how moa-llm is set up: fix the config or the
environment. `NeuronError` and its subclasses are failures at run time; a failed neuron is
recorded in the result's trace, and only `AllNeuronsFailed` / `AggregationFailed` reach the
caller of `MixtureOfAgents.process()`.

No message built here contains an API key: provider text is masked (`redact()`) where it
becomes moa text, before it is cut to length.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moa.result import LayerResult

__all__ = [
    "AggregationFailed",
    "AllNeuronsFailed",
    "AuthenticationError",
    "ConfigError",
    "InvalidResponseError",
    "MissingCredentialsError",
    "MoAError",
    "NeuronError",
    "PluginError",
    "ProviderConnectionError",
    "ProviderError",
    "QueryError",
    "RateLimitError",
    "RateLimiterUnavailable",
    "SpendLimitExceeded",
    "TimeoutError",
    "redact",
]


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Return `text` with `secrets`, and every secret moa knows of (the keys it resolved, the
    environment's `*_KEY` / `*_TOKEN` / `*_SECRET` / `*_PASSWORD` values), replaced by `***`.
    Values shorter than 8 characters are not treated as secrets."""
    from moa._redact import redact as _redact

    return _redact(text, secrets)


class MoAError(Exception):
    """Base class of every error moa-llm raises on purpose."""


class ConfigError(MoAError, ValueError):
    """The configuration is invalid.

    `source` is the file (or `<string>` / `<dict>`) and `errors` a list of
    `(key_path, message)` pairs such as `("proposal_layers[1].neurons[0].temperature",
    "Input should be less than or equal to 2")`. `values` pairs each key path at fault with
    the type of the value found there (`"missing"` for a missing key): what may be shown to
    someone who must not see the file's content.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        errors: Sequence[tuple[str, str]] = (),
        values: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.source = source
        self.errors = list(errors)
        self.values = list(values)
        super().__init__(message)

    def __reduce__(self) -> Any:
        state = {"source": self.source, "errors": self.errors, "values": self.values}
        return (_rebuild, (type(self), (str(self),), state))


class MissingCredentialsError(ConfigError):
    """A neuron needs an API key and the variable that should hold it is not set."""

    def __init__(self, message: str, *, variable: str, source: str | None = None) -> None:
        self.variable = variable
        super().__init__(message, source=source)

    def __reduce__(self) -> Any:
        return (
            _rebuild,
            (type(self), (str(self),), {"variable": self.variable, "source": self.source}),
        )


class PluginError(MoAError):
    """A plugin could not be loaded, or a neuron type is not installed."""


class QueryError(MoAError, ValueError):
    """The query passed to `process()` is empty, has no user turn, or is not a str / list."""


class NeuronError(MoAError):
    """One call of one neuron failed.

    `neuron` is the neuron's key path (`proposal_layers[0].neurons[1]`), `model` its model,
    `layer` the layer's name, `index` the neuron's position in its layer, `status_code` the
    upstream HTTP status when there was one (None for connection failures and timeouts on our
    side), `attempts` how many requests were made before giving up, and `retry_after` the
    seconds the provider asked to wait (`Retry-After`), if it said.
    """

    def __init__(
        self,
        message: str,
        *,
        neuron: str | None = None,
        model: str | None = None,
        layer: str | None = None,
        index: int | None = None,
        status_code: int | None = None,
        attempts: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.neuron = neuron
        self.model = model
        self.layer = layer
        self.index = index
        self.status_code = status_code
        self.attempts = attempts
        self.retry_after = retry_after
        super().__init__(message)

    def __str__(self) -> str:
        message = super().__str__()
        where = " ".join(p for p in (self.neuron, f"({self.model})" if self.model else None) if p)
        status = f" [HTTP {self.status_code}]" if self.status_code else ""
        return f"{where}: {message}{status}" if where else f"{message}{status}"

    def _context(self) -> dict[str, Any]:
        return {
            "neuron": self.neuron,
            "model": self.model,
            "layer": self.layer,
            "index": self.index,
            "status_code": self.status_code,
            "attempts": self.attempts,
            "retry_after": self.retry_after,
        }

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), (self.args[0],), self._context()))


class ProviderError(NeuronError):
    """The provider answered with an error, or could not be reached."""


class ProviderConnectionError(ProviderError):
    """The provider could not be reached, or the connection dropped before an answer."""


class InvalidResponseError(ProviderError):
    """The provider answered successfully but with no usable text: no choices, null or empty
    content, a body that is not JSON, or a stream cut off before its end."""


class RateLimitError(NeuronError):
    """The provider rate-limited the call (HTTP 429). `retry_after` is in seconds, if given."""


class AuthenticationError(NeuronError):
    """The provider rejected the credentials (HTTP 401 / 403)."""


class TimeoutError(NeuronError, builtins.TimeoutError):  # noqa: A001 - documented public name
    """The neuron did not answer in time."""


class AllNeuronsFailed(MoAError, ExceptionGroup[Exception]):
    """Every neuron of a layer failed. `exceptions` holds each neuron's `NeuronError`.

    `layers` holds the layers that completed before this one (what was paid for is not lost).
    """

    layer: str
    layers: tuple[LayerResult, ...]

    def __new__(
        cls,
        message: str,
        exceptions: Sequence[Exception],
        *,
        layer: str = "",
        layers: Sequence[LayerResult] = (),
    ) -> AllNeuronsFailed:
        self = super().__new__(cls, message, list(exceptions))
        self.layer = layer
        self.layers = tuple(layers)
        return self

    def __init__(
        self,
        message: str,
        exceptions: Sequence[Exception],
        *,
        layer: str = "",
        layers: Sequence[LayerResult] = (),
    ) -> None:
        super().__init__(message, list(exceptions))

    def derive(self, excs: Sequence[Exception]) -> AllNeuronsFailed:  # type: ignore[override]
        return AllNeuronsFailed(self.message, excs, layer=self.layer, layers=self.layers)

    def __reduce__(self) -> Any:
        return (
            _rebuild_group,
            (self.message, list(self.exceptions), self.layer, self.layers),
        )


class AggregationFailed(MoAError):
    """The aggregator (and every fallback it had) failed. `cause` is the last failure,
    `proposals` holds the last proposal layer's surviving answers and `layers` every completed
    layer, so nothing that was paid for is lost."""

    def __init__(
        self,
        message: str,
        *,
        cause: NeuronError | None = None,
        layers: Sequence[LayerResult] = (),
    ) -> None:
        self.cause = cause
        self.layers = tuple(layers)
        super().__init__(message)

    @property
    def proposals(self) -> list[str]:
        """Texts of the last proposal layer's surviving neurons."""
        if not self.layers:
            return []
        return [n.text for n in self.layers[-1].neurons if n.text is not None]

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), (str(self),), {"cause": self.cause, "layers": self.layers}))


class SpendLimitExceeded(MoAError):
    """A query's calls cost `spent` USD, reaching `max_cost_per_query` (`limit`): no further
    layer was started. `layers` holds every completed layer, so nothing paid for is lost."""

    def __init__(
        self,
        message: str,
        *,
        spent: float = 0.0,
        limit: float = 0.0,
        layers: Sequence[LayerResult] = (),
    ) -> None:
        self.spent = spent
        self.limit = limit
        self.layers = tuple(layers)
        super().__init__(message)

    def __reduce__(self) -> Any:
        return (
            _rebuild,
            (
                type(self),
                (str(self),),
                {"spent": self.spent, "limit": self.limit, "layers": self.layers},
            ),
        )


class RateLimiterUnavailable(MoAError):
    """The shared rate limiter's store (Redis at `MOA_REDIS_URL`) could not be used: no call
    is made without it. The message never shows the URL (it may hold a password)."""


def _rebuild(cls: type[Exception], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Exception:
    return cls(*args, **kwargs)


def _rebuild_group(
    message: str, exceptions: list[Exception], layer: str, layers: tuple[Any, ...]
) -> AllNeuronsFailed:
    return AllNeuronsFailed(message, exceptions, layer=layer, layers=layers)
