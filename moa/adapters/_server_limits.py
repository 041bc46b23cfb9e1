"""What `moa serve` accepts from a client, and for how long it waits.

Each limit has a default and a `moa serve` flag (README, Security):

- `max_body_bytes` (4 MiB): a larger body is answered 413 before it is read (by its
  `Content-Length`, or as soon as a chunked body passes the limit);
- `max_json_depth` (32) nested arrays/objects and `max_int_digits` (100) digits in an integer;
  `NaN` / `Infinity` are not JSON: 400 for each;
- `header_timeout` (10 s) to send the request line and headers, counted from the connection
  (or from the end of the previous response): slowloris connections are closed;
- `body_timeout` (30 s) to send the whole body, then 408;
- `keep_alive_timeout` (5 s) an idle keep-alive connection stays open (uvicorn's own knob);
- `max_connections` (1000) connections and requests at once; beyond it uvicorn answers 503
  (its `limit_concurrency`).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = [
    "REFUSED_FIELDS",
    "ServerLimits",
    "read_json_body",
    "refuse_unsupported",
    "uvicorn_options",
]


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one client may send and how slowly (see the module docstring)."""

    max_body_bytes: int = 4 << 20
    max_json_depth: int = 32
    max_int_digits: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: int = 5
    max_connections: int = 1000

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value}")
        for name in ("max_body_bytes", "max_json_depth", "max_int_digits", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.keep_alive_timeout < 0:
            raise ValueError("keep_alive_timeout must be >= 0")


class RequestRefused(Exception):
    """A request the server answers with `status` and an OpenAI-style error."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        self.status, self.message, self.param, self.code = status, message, param, code
        super().__init__(message)


async def read_json_body(request: Request, limits: ServerLimits) -> Any:
    """The request's JSON body within `limits`; `RequestRefused` (400 / 408 / 413) else."""
    limit = limits.max_body_bytes
    too_big = RequestRefused(
        413, f"The request body is larger than {limit} bytes.", code="request_too_large"
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise too_big  # refused before reading a byte of it
    body = bytearray()
    try:
        async with asyncio.timeout(limits.body_timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise too_big
    except TimeoutError:
        raise RequestRefused(
            408,
            f"The request body did not arrive within {limits.body_timeout:g} seconds.",
            code="request_timeout",
        ) from None
    return parse_json(bytes(body), limits)


def parse_json(body: bytes, limits: ServerLimits) -> Any:
    """`json.loads` with bounded integers and depth and without NaN / Infinity."""
    digits = limits.max_int_digits

    def bounded_int(text: str) -> int:
        if len(text.lstrip("-")) > digits:
            raise _Bad(f"an integer has more than {digits} digits")
        return int(text)

    def no_constant(name: str) -> Any:
        raise _Bad(f"{name} is not a JSON value")

    try:
        value = json.loads(body, parse_int=bounded_int, parse_constant=no_constant)
    except _Bad as exc:
        raise RequestRefused(
            400, f"We could not parse the JSON body of your request: {exc}."
        ) from None
    except RecursionError:
        raise RequestRefused(400, _too_deep(limits)) from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        raise RequestRefused(400, "We could not parse the JSON body of your request.") from None
    if _depth_exceeds(value, limits.max_json_depth):
        raise RequestRefused(400, _too_deep(limits))
    return value


class _Bad(ValueError):
    pass


def _too_deep(limits: ServerLimits) -> str:
    return f"The JSON body is nested too deep (more than {limits.max_json_depth} levels)."


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


REFUSED_FIELDS: dict[str, str] = {
    "tools": "moa answers with text only and calls no tools",
    "tool_choice": "moa answers with text only and calls no tools",
    "functions": "moa answers with text only and calls no functions",
    "function_call": "moa answers with text only and calls no functions",
    "response_format": "moa cannot enforce a response format",
    "logprobs": "moa has no log probabilities for a synthesised answer",
    "top_logprobs": "moa has no log probabilities for a synthesised answer",
    "audio": "moa answers with text only",
    "modalities": "moa answers with text only",
    "prediction": "moa does not use predicted outputs",
    "web_search_options": "moa does not search the web",
}
"""Fields that would change what the answer means: refused (400) unless absent or set to
what moa does anyway (no tools, text). Sampling parameters are accepted and ignored."""

_HARMLESS: dict[str, Any] = {
    "tools": lambda v: v == [],
    "tool_choice": lambda v: v == "none",
    "functions": lambda v: v == [],
    "response_format": lambda v: v == {"type": "text"},
    "logprobs": lambda v: v is False,
    "modalities": lambda v: v == ["text"],
}


def refuse_unsupported(body: Mapping[str, Any]) -> None:
    """`RequestRefused` naming the first field moa cannot honour."""
    for field, why in REFUSED_FIELDS.items():
        value = body.get(field)
        if value is None:
            continue
        harmless = _HARMLESS.get(field)
        if harmless is not None and harmless(value):
            continue
        raise RequestRefused(400, f"'{field}' is not supported: {why}.", param=field,
                             code="unsupported_parameter")  # fmt: skip


def uvicorn_options(limits: ServerLimits) -> dict[str, Any]:
    """Keyword arguments of `uvicorn.run` / `uvicorn.Config` that apply `limits`."""
    return {
        "http": _guarded_protocol(limits.header_timeout),
        "timeout_keep_alive": limits.keep_alive_timeout,
        "limit_concurrency": limits.max_connections,
    }


def _guarded_protocol(header_timeout: float) -> type[Any]:
    """uvicorn's h11 protocol with a deadline for the request line and headers.

    uvicorn closes idle keep-alive connections but not one that trickles its headers a byte
    at a time (or never sends them): this closes any connection that has no request in
    progress `header_timeout` seconds after it opened or after its last response.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
            self._header_deadline = self.loop.call_later(header_timeout, self._headers_late)

        def _headers_late(self) -> None:
            self._header_deadline = None
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                self.transport.close()

    GuardedH11Protocol.header_timeout = header_timeout  # type: ignore[attr-defined]
    return GuardedH11Protocol
