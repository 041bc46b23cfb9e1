"""The direct transport's HTTP client: one pooled aiohttp session per event loop, shared by
all neurons.

litellm stays in charge of *where* a call goes (provider, URL, key); for OpenAI-compatible
endpoints this module makes the call itself, skipping litellm's per-call bookkeeping (cost
calculation, success logging in a thread pool, repeated model-info lookups), which cost ~5x
the CPU of the HTTP request. Failures are raised as moa's error classes with the upstream
status code (through the one failure-kind table, every upstream text through
`upstream_text`); the caller adds the neuron's context.

Sessions close themselves when their event loop shuts down (`asyncio.run()` finalises async
generators, and each session is guarded by one), so scripts need no explicit cleanup.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from moa.errors import InvalidResponseError, NeuronError, ProviderError
from moa.neurons.llm._upstream_errors import (
    FailureKind,
    kind_of_status,
    neuron_error,
    retry_after_seconds,
    upstream_text,
)

if TYPE_CHECKING:
    import aiohttp

__all__ = ["close_session", "post_json", "stream_sse"]

_sessions: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncGenerator[None, None]]
] = weakref.WeakKeyDictionary()


async def _close_at_loop_shutdown(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await session.close()


async def _session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    entry = _sessions.get(loop)
    if entry is not None and not entry[0].closed:
        return entry[0]
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=True,  # honour HTTP(S)_PROXY like litellm/httpx do
    )
    guard = _close_at_loop_shutdown(session)
    await guard.__anext__()  # registered with the loop's async-generator finaliser
    _sessions[loop] = (session, guard)
    return session


async def close_session() -> None:
    """Close this event loop's session now (optional: loop shutdown closes it too)."""
    entry = _sessions.pop(asyncio.get_running_loop(), None)
    if entry is not None:
        await entry[1].aclose()


def _headers(api_key: SecretStr | None, **extra: str) -> dict[str, str]:
    """Request headers. Built inline at the call, so no moa frame keeps the key in a local."""
    if api_key is None:
        return extra
    return {**extra, "Authorization": f"Bearer {api_key.get_secret_value()}"}


def _error_for(
    status: int, headers: Mapping[str, str], body: bytes, api_key: SecretStr | None
) -> NeuronError:
    message: str | bytes = body
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            message = str(parsed["error"].get("message") or body.decode("utf-8", "replace"))
        elif isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            message = parsed["error"]
    except ValueError:
        pass
    # Retry-After is honoured for any retryable status, not only 429
    return neuron_error(
        kind_of_status(status),
        upstream_text(message, _secrets(api_key), limit=2000),
        status=status,
        retry_after=retry_after_seconds(headers),
    )


def _secrets(api_key: SecretStr | None) -> list[str | None]:
    return [api_key.get_secret_value() if api_key else None]


def _transport_error(exc: BaseException, timeout: float | None) -> NeuronError:
    if isinstance(exc, TimeoutError):
        return neuron_error(FailureKind.TIMEOUT, f"no answer within {timeout or 0:g} s")
    return neuron_error(FailureKind.CONNECTION, upstream_text(f"{type(exc).__name__}: {exc}", []))


async def post_json(
    url: str,
    payload: Mapping[str, Any],
    *,
    api_key: SecretStr | None,
    timeout_s: float | None,
) -> dict[str, Any]:
    """POST `payload` as JSON and return the decoded JSON object of a 2xx answer."""
    import aiohttp

    session = await _session()
    failure: NeuronError | None = None
    try:
        async with session.post(
            url,
            data=json.dumps(payload),
            headers=_headers(api_key, **{"Content-Type": "application/json"}),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            # The body goes straight into the error or the decoder, never into a local: an
            # error body may echo the key, and error trackers capture frame locals.
            if response.status >= 400:
                failure = _error_for(
                    response.status, response.headers, await response.read(), api_key
                )
            else:
                return _decode(await response.read(), api_key)
    except (aiohttp.ClientError, TimeoutError) as exc:
        failure = _transport_error(exc, timeout_s)
    raise failure  # outside the except block: no __context__ into aiohttp's frames


def _decode(body: bytes, api_key: SecretStr | None) -> dict[str, Any]:
    failure: NeuronError | None = None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
        failure = neuron_error(
            FailureKind.NOT_JSON, repr(upstream_text(body, _secrets(api_key), limit=200))
        )
    else:
        if not isinstance(data, dict):
            failure = InvalidResponseError("the provider answered with JSON that is not an object")
    if failure is not None:
        raise failure  # outside the except block: no __context__ holding the body
    assert isinstance(data, dict)
    return data


async def stream_sse(
    url: str,
    payload: Mapping[str, Any],
    *,
    api_key: SecretStr | None,
    timeout_s: float | None,
) -> AsyncIterator[dict[str, Any]]:
    """POST with `stream: true` and yield each decoded `data:` event until `[DONE]`.

    `timeout_s` bounds the wait for the answer to start and for each following chunk. Lines
    are decoded by `_events`: no frame a failure passes through keeps raw upstream text.
    """
    import aiohttp

    session = await _session()
    failure: NeuronError | None = None
    try:
        async with session.post(
            url,
            data=json.dumps(payload),
            headers=_headers(
                api_key, **{"Content-Type": "application/json", "Accept": "text/event-stream"}
            ),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s),
        ) as response:
            if response.status >= 400:
                failure = _error_for(
                    response.status, response.headers, await response.read(), api_key
                )
            else:
                async with aclosing(_events(response.content, api_key)) as events:
                    async for event in events:
                        if event is None:  # [DONE]
                            break
                        if isinstance(event, NeuronError):
                            failure = event
                            break
                        yield event
                    else:
                        failure = neuron_error(FailureKind.CUT_STREAM, "")
    except (aiohttp.ClientError, TimeoutError) as exc:
        failure = _transport_error(exc, timeout_s)
    if failure is not None:
        raise failure  # outside the except block: no __context__ into aiohttp's frames


async def _events(
    lines: AsyncIterable[bytes], api_key: SecretStr | None
) -> AsyncGenerator[dict[str, Any] | NeuronError | None, None]:
    """The decoded `data:` events of an SSE body, then None for `[DONE]`. An upstream failure
    is yielded, not raised, so this frame (which holds the raw line) is never in an error's
    traceback."""
    async for raw in lines:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            yield None
            return
        try:
            event = json.loads(data)
        except ValueError:
            shown = upstream_text(data, _secrets(api_key), limit=200)
            yield InvalidResponseError(
                f"the provider streamed an event that is not JSON: {shown!r}"
            )
            return
        if isinstance(event, dict):
            error = event.get("error")
            if isinstance(error, dict):
                text = str(error.get("message", error))
                yield ProviderError(upstream_text(text, _secrets(api_key), limit=2000))
                return
            yield event
