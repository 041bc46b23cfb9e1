"""What went wrong upstream, read from an exception or an HTTP answer (no litellm import).

Shared by both call paths of `LLMNeuron`: litellm's exceptions are classified by their cause
chain, and the fast path's HTTP answers by status and headers, into the same moa errors.
"""

from __future__ import annotations

import email.utils
import re
import time
from typing import Any

from moa.errors import (
    AuthenticationError,
    InvalidResponseError,
    NeuronError,
    ProviderConnectionError,
    ProviderError,
    RateLimitError,
)
from moa.errors import TimeoutError as NeuronTimeout

__all__ = [
    "classify_exception",
    "kind_of_status",
    "neuron_error",
    "reason",
    "retry_after_of",
    "retry_after_seconds",
]


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain) and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _kinds(chain: list[BaseException]) -> set[tuple[str, str]]:
    """(top-level module, class name) of every class in the MRO of every exception."""
    return {
        (klass.__module__.partition(".")[0], klass.__name__)
        for error in chain
        for klass in type(error).__mro__
    }


_AUTH_NAMES = frozenset({"AuthenticationError", "PermissionDeniedError"})
_TIMEOUTS = {
    ("openai", "APITimeoutError"),
    ("httpx", "TimeoutException"),
    ("builtins", "TimeoutError"),
}
_CONNECTION = {
    ("openai", "APIConnectionError"),
    ("httpx", "NetworkError"),
    ("httpx", "RemoteProtocolError"),
    ("aiohttp", "ClientConnectionError"),
    ("builtins", "ConnectionError"),
}


def classify_exception(exc: BaseException) -> tuple[str, int | None]:
    """What went wrong in a litellm/openai call, and the upstream HTTP status if there was
    one: kind is rate_limit, auth, timeout, connection, not_json, cut_stream or error.

    The causes decide first: litellm's top-level class says "InternalServerError (500)" for
    a refused connection and for a body that is not JSON alike.
    """
    chain = _causes(exc)
    causes = _kinds(chain[1:])
    if causes & _TIMEOUTS:
        return "timeout", None
    if ("json", "JSONDecodeError") in causes:
        return "not_json", None
    if ("builtins", "StopAsyncIteration") in causes:
        return "cut_stream", None
    if causes & _CONNECTION:
        return "connection", None
    raw = getattr(exc, "status_code", None)
    status = raw if isinstance(raw, int) else None
    name = type(exc).__name__
    if status == 429 or name == "RateLimitError":
        return "rate_limit", status or 429
    if status in {401, 403} or name in _AUTH_NAMES:
        return "auth", status
    if status == 408 or (status is None and (_kinds(chain[:1]) & _TIMEOUTS)):
        return "timeout", status
    return "error", status


_PREFIX = re.compile(r"^(?:litellm\.)?(?:\w*(?:Error|Exception|Timeout)|Timeout Error)(?::| -)\s+")


def reason(exc: BaseException) -> str:
    """The provider's message without litellm's repeated class-name prefixes."""
    text = str(getattr(exc, "message", None) or exc).strip()
    for _ in range(6):
        stripped = _PREFIX.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    if text in {"", "Connection error."}:  # say what actually failed
        chain = _causes(exc)
        root = chain[-1]
        text = f"{text} {type(root).__name__}: {root}".strip() if len(chain) > 1 else text
    return text[:500]


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from `retry-after-ms`, or `retry-after` in seconds or as an HTTP date."""
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms") is not None:
            return float(headers["retry-after-ms"]) / 1000.0
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:  # an HTTP date
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def retry_after_of(exc: BaseException) -> float | None:
    """The Retry-After of the HTTP response an exception carries, if any."""
    return retry_after_seconds(getattr(getattr(exc, "response", None), "headers", None))


def kind_of_status(status: int) -> str:
    """The failure kind of an HTTP error status, as `classify_exception` names them."""
    if status == 429:
        return "rate_limit"
    if status in (401, 403):
        return "auth"
    if status == 408:
        return "timeout"
    return "error"


def neuron_error(
    kind: str, message: str, *, status: int | None = None, retry_after: float | None = None
) -> NeuronError:
    """moa's error for a failure kind: the one mapping both call paths use, so a provider
    failing the same way fails the same way whether litellm or moa made the call."""
    if kind == "rate_limit":
        return RateLimitError(
            f"rate limited: {message}", status_code=status, retry_after=retry_after
        )
    if kind == "auth":
        return AuthenticationError(f"credentials rejected: {message}", status_code=status)
    if kind == "timeout":
        return NeuronTimeout(f"timed out: {message}", status_code=status, retry_after=retry_after)
    if kind == "connection":
        return ProviderConnectionError(f"connection failed: {message}")
    if kind == "not_json":
        return InvalidResponseError(f"the response body is not valid JSON: {message}")
    if kind == "cut_stream":
        return InvalidResponseError("the stream ended before it was complete (no [DONE])")
    return ProviderError(message, status_code=status, retry_after=retry_after)
