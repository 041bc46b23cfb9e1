"""The one failure-kind table of the llm neuron, and the one place upstream text becomes ours.

Each transport (`_litellm`, `_direct`) reads its own failures (litellm's exceptions by their
cause chain, HTTP answers by status and headers) into a `FailureKind`, and `neuron_error()`
turns a kind into moa's error class, so a provider failing the same way fails the same way
whatever made the call.

`upstream_text()` is where text that came from upstream (an error body, an SSE error event,
an exception message) becomes text moa shows, logs or raises: every transport passes such
text through it, and it redacts the secrets before it truncates.
"""

from __future__ import annotations

import email.utils
import enum
import time
from collections.abc import Iterable
from typing import Any

from moa._redact import clip
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
    "FailureKind",
    "kind_of_status",
    "neuron_error",
    "retry_after_seconds",
    "upstream_text",
]


class FailureKind(enum.StrEnum):
    """What went wrong upstream, whichever transport saw it."""

    RATE_LIMIT = "rate_limit"
    """429: too many requests (retried, honouring Retry-After)."""
    AUTH = "auth"
    """401/403: the key was rejected (never retried)."""
    TIMEOUT = "timeout"
    """No answer in time, or 408 (retried)."""
    CONNECTION = "connection"
    """Refused, reset or dropped before an answer (retried)."""
    NOT_JSON = "not_json"
    """A 2xx whose body is not JSON (never retried)."""
    CUT_STREAM = "cut_stream"
    """A stream that ended before `[DONE]` (never retried once text was delivered)."""
    ERROR = "error"
    """Anything else the provider answered with; retried for 409 and 5xx."""


def upstream_text(raw: str | bytes, secrets: Iterable[str | None], *, limit: int = 500) -> str:
    """Text from upstream as moa may show it: decoded, every secret redacted (those in
    `secrets` and every one moa knows of, see `moa._redact`), then cut to `limit` characters
    (redacting first: a key across the cut leaves no prefix).

    Every transport passes upstream error text through here before it reaches an error, a
    log or a result (the answer itself is masked by the neuron, which sees both transports'
    answers); this is the place to widen what is redacted."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return clip(text, limit, secrets)


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


def kind_of_status(status: int) -> FailureKind:
    """The failure kind of an HTTP error status."""
    if status == 429:
        return FailureKind.RATE_LIMIT
    if status in (401, 403):
        return FailureKind.AUTH
    if status == 408:
        return FailureKind.TIMEOUT
    return FailureKind.ERROR


def neuron_error(
    kind: FailureKind, message: str, *, status: int | None = None, retry_after: float | None = None
) -> NeuronError:
    """moa's error for a failure kind (`message` already through `upstream_text`)."""
    match kind:
        case FailureKind.RATE_LIMIT:
            return RateLimitError(
                f"rate limited: {message}", status_code=status, retry_after=retry_after
            )
        case FailureKind.AUTH:
            return AuthenticationError(f"credentials rejected: {message}", status_code=status)
        case FailureKind.TIMEOUT:
            return NeuronTimeout(
                f"timed out: {message}", status_code=status, retry_after=retry_after
            )
        case FailureKind.CONNECTION:
            return ProviderConnectionError(f"connection failed: {message}")
        case FailureKind.NOT_JSON:
            return InvalidResponseError(f"the response body is not valid JSON: {message}")
        case FailureKind.CUT_STREAM:
            return InvalidResponseError("the stream ended before it was complete (no [DONE])")
    return ProviderError(message, status_code=status, retry_after=retry_after)
