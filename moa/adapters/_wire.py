"""How a failed run is described outside Python: one readable message, and the HTTP status
and OpenAI error `type` / `code` it is reported with (server, litellm provider, batch)."""

from __future__ import annotations

from dataclasses import dataclass

from moa.errors import AggregationFailed, AllNeuronsFailed, MoAError, QueryError, RateLimitError
from moa.errors import TimeoutError as NeuronTimeout

__all__ = ["WireError", "describe_error", "wire_error"]


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
