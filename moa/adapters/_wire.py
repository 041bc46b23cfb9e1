"""How a failed run is described outside Python: one readable message, and the HTTP status
and OpenAI error `type` / `code` it is reported with (server, litellm provider, batch)."""

from __future__ import annotations

from dataclasses import dataclass

from moa.errors import (
    AggregationFailed,
    AllNeuronsFailed,
    AuthenticationError,
    InvalidResponseError,
    MoAError,
    NeuronError,
    ProviderConnectionError,
    QueryError,
    RateLimitError,
)
from moa.errors import TimeoutError as NeuronTimeout

__all__ = ["WireError", "describe_error", "failure_kind", "public_message", "wire_error"]


def describe_error(exc: BaseException) -> str:
    """One readable message for an error, with the causes of an `AllNeuronsFailed`."""
    message = str(exc)
    if isinstance(exc, BaseExceptionGroup):
        message = exc.message
        missing = [str(c) for c in exc.exceptions if str(c) not in message]
        if missing:
            message = f"{message}: {'; '.join(missing)}"
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and str(cause) not in message:
        message = f"{message}: {cause}"
    return message


@dataclass(frozen=True)
class WireError:
    """An error as an OpenAI-compatible API reports it."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None


def wire_error(exc: BaseException) -> WireError:
    """The status a failed run is reported with: 400 for a bad query, 429 when every cause
    was a rate limit, 504 when every cause timed out, 502 for other upstream failures and 500
    for anything that is not a `MoAError` (a bug; its text is not shown)."""
    if not isinstance(exc, MoAError):
        return WireError(500, "internal error in moa", "server_error")
    message = describe_error(exc)
    if isinstance(exc, QueryError):
        return WireError(400, message, "invalid_request_error", param="messages")
    causes: list[BaseException] = []
    if isinstance(exc, AllNeuronsFailed):
        causes = list(exc.exceptions)
    elif isinstance(exc, AggregationFailed) and exc.cause is not None:
        causes = [exc.cause]
    if causes and all(isinstance(c, RateLimitError) for c in causes):
        return WireError(429, message, "rate_limit_error", "rate_limit_exceeded")
    if causes and all(isinstance(c, NeuronTimeout) for c in causes):
        return WireError(504, message, "timeout_error", "upstream_timeout")
    return WireError(502, message, "server_error", "upstream_error")


def failure_kind(exc: BaseException) -> str:
    """How a neuron failed, in a few stable words (never the upstream's text)."""
    if isinstance(exc, NeuronTimeout):
        return "timed out"
    if isinstance(exc, RateLimitError):
        return "rate limited"
    if isinstance(exc, AuthenticationError):
        return "authentication failed"
    if isinstance(exc, ProviderConnectionError):
        return "connection failed"
    if isinstance(exc, InvalidResponseError):
        return "invalid response"
    status = getattr(exc, "status_code", None)
    if isinstance(exc, NeuronError) and status:
        return f"upstream error (HTTP {status})"
    return "failed"


def _neuron(exc: BaseException) -> str:
    if not isinstance(exc, NeuronError):
        return "a neuron"
    name = exc.neuron or "a neuron"
    return f"{name} ({exc.model})" if exc.model else name


def public_message(exc: BaseException) -> str:
    """What a failed run is reported as to someone who must not see upstream text (API
    clients of `moa serve`): each failed neuron and how it failed."""
    if isinstance(exc, AllNeuronsFailed):
        where = exc.layer or "a layer"
        causes = "; ".join(f"{_neuron(c)}: {failure_kind(c)}" for c in exc.exceptions)
        return f"every neuron of {where} failed: {causes}"
    if isinstance(exc, AggregationFailed):
        cause = exc.cause
        detail = f": {_neuron(cause)}: {failure_kind(cause)}" if cause is not None else ""
        return f"the aggregator failed{detail}"
    if isinstance(exc, NeuronError):
        return f"{_neuron(exc)}: {failure_kind(exc)}"
    return "the mixture failed" if isinstance(exc, MoAError) else "internal error in moa"
