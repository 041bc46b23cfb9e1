"""An OpenAI-compatible HTTP server for mixtures (Starlette; `pip install 'moa-llm[server]'`).

    POST /v1/chat/completions   run the mixture named by `model` on `messages`
    GET  /v1/models             the mixtures served
    GET  /health                liveness (no auth)

Responses follow the OpenAI wire format: `chat.completion`, or with `stream: true` server-sent
`chat.completion.chunk` events ending in `data: [DONE]` (plus a usage chunk with `choices: []`
when `stream_options.include_usage` is set). Errors are `{"error": {"message", "type",
"param", "code"}}` with OpenAI's status codes; an error after the stream started is sent as
one `data: {"error": ...}` event. Sampling parameters (`temperature`, `max_tokens`...) are
accepted and ignored: the mixture's config decides them; fields that would change what the
answer means (`tools`, `response_format`...) are refused with 400 naming the field. A client
that disconnects cancels the upstream calls of its request.

Clients are not trusted: bodies, JSON depth and integers are bounded and slow clients are cut
off (`ServerLimits`, applied to uvicorn with `uvicorn_options`); every malformed request gets a
JSON 400 / 408 / 413. A failed run is reported with a stable message naming each neuron and
how it failed; the upstream's own text (which may name internal hosts) goes to the log only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from moa._unicode import json_bytes, lone_surrogate
from moa.adapters._server_limits import (
    RequestRefused,
    ServerLimits,
    read_json_body,
    refuse_unsupported,
    uvicorn_options,
)
from moa.adapters._streaming import events
from moa.adapters._wire import describe_error, public_message, wire_error
from moa.errors import MoAError
from moa.events import Completed, MoAEvent, Token
from moa.mixture import MixtureOfAgents
from moa.result import MoAResult

__all__ = ["APIError", "ServerLimits", "create_app", "uvicorn_options"]

logger = logging.getLogger("moa.adapters.server")
T = TypeVar("T")
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class _JSON(JSONResponse):
    """A JSON response that is always valid UTF-8 (a lone surrogate becomes U+FFFD)."""

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


class APIError(Exception):
    """An error answered with an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",  # noqa: A002 - the OpenAI field name
        *,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}
        super().__init__(message)

    def response(self) -> JSONResponse:
        return _JSON(self.body, status_code=self.status)


class _Disconnected(Exception):
    """The client went away before the answer was ready."""


def _api_error(exc: BaseException) -> APIError:
    """The HTTP error a failed run is reported as: a stable message for the client, the
    upstream's own text in the log."""
    error = wire_error(exc)
    if error.status == 500:
        logger.error("moa server: unexpected error", exc_info=exc)
    elif error.status >= 429:
        logger.warning("moa server: run failed (HTTP %d): %s", error.status, describe_error(exc))
    message = error.message if error.status < 429 else public_message(exc)
    return APIError(error.status, message, error.type, param=error.param, code=error.code)


def _messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "'messages' must be a non-empty array of messages", param="messages")
    messages = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(400, f"{where} must be an object", param=where)
        role = _ROLES.get(str(message.get("role")))
        if role is None:
            raise APIError(
                400,
                f"{where}.role must be one of system, developer, user, assistant "
                f"(got {message.get('role')!r})",
                param=f"{where}.role",
            )
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not (
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text", ""), str)
                ):
                    raise APIError(
                        400, f"{where}.content: only text parts (with string text) are supported",
                        param=f"{where}.content",
                    )  # fmt: skip
                parts.append(str(part.get("text", "")))
            content = "".join(parts)
        if not isinstance(content, str):
            raise APIError(400, f"{where}.content must be a string", param=f"{where}.content")
        position = lone_surrogate(content)
        if position is not None:
            raise APIError(
                400,
                f"{where}.content holds a lone surrogate at position {position}: not valid "
                "Unicode text",
                param=f"{where}.content",
            )
        messages.append({"role": role, "content": content})
    return messages


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and every call it made) if the client disconnects."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.cancelled():
        raise _Disconnected
    return task.result()


def _usage(result: MoAResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "total_tokens": result.usage.total_tokens,
    }


def create_app(
    mixtures: Mapping[str, MixtureOfAgents],
    *,
    api_key: str | None = None,
    prepare: bool = True,
    limits: ServerLimits | None = None,
) -> Starlette:
    """A Starlette app serving `mixtures` by name.

    `api_key` (the CLI passes `MOA_SERVER_API_KEY`) makes /v1 routes require
    `Authorization: Bearer <api_key>`. `prepare` loads what the mixtures need at startup.
    `limits` bounds request bodies (the connection-level limits are uvicorn's: run it with
    `uvicorn_options(limits)`).
    """
    from moa._redact import remember

    remember(api_key)  # never echoed back, whatever an upstream quotes
    served = dict(mixtures)
    limits = limits or ServerLimits()
    started = int(time.time())

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
            )
        if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def health(request: Request) -> Response:
        return _JSON({"status": "ok", "models": list(served)})

    async def models(request: Request) -> Response:
        check_auth(request)
        data = [{"id": n, "object": "model", "created": started, "owned_by": "moa"} for n in served]
        return _JSON({"object": "list", "data": data})

    async def chat_completions(request: Request) -> Response:
        check_auth(request)
        body = await read_json_body(request, limits)
        if not isinstance(body, dict):
            raise APIError(400, "The request body must be a JSON object.")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise APIError(400, "You must provide a model parameter.", param="model")
        if name not in served:
            raise APIError(
                404,
                f"The model '{name}' does not exist. Served: {', '.join(served)}.",
                param="model",
                code="model_not_found",
            )
        messages = _messages(body)
        stream = body.get("stream", False)
        if stream is not None and not isinstance(stream, bool):
            raise APIError(400, "'stream' must be a boolean", param="stream")
        if body.get("n", 1) not in (1, None):
            raise APIError(400, "moa returns one choice: 'n' must be 1", param="n")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise APIError(400, "'stream_options' must be an object", param="stream_options")
        refuse_unsupported(body)
        header = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": name,
            "system_fingerprint": None,
        }
        if not stream:  # process(): the aggregator is not streamed, and retries apply
            result = await _until_disconnect(request, served[name].process(messages))
            return _JSON(
                {
                    "id": header["id"],
                    "object": "chat.completion",
                    "created": header["created"],
                    "model": name,
                    "system_fingerprint": None,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": result.content,
                                "refusal": None,
                            },
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": _usage(result),
                }
            )
        # Wait for the first piece of the answer before sending headers, so that a run that
        # fails early still gets a proper HTTP status.
        upstream = events(served[name], messages)
        first = await _until_disconnect(request, _first(upstream))
        include_usage = bool(options.get("include_usage"))
        return StreamingResponse(
            _sse(upstream, first, header, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return exc.response()

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return APIError(exc.status_code, str(exc.detail), kind).response()

    async def on_run_error(request: Request, exc: Exception) -> Response:
        return _api_error(exc).response()

    async def on_refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestRefused)
        return APIError(exc.status, exc.message, param=exc.param, code=exc.code).response()

    async def on_bug(request: Request, exc: Exception) -> Response:
        return _api_error(exc).response()  # logged with its traceback; the client sees JSON

    async def on_disconnect(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # nobody is listening any more

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if prepare:
            await asyncio.gather(*(m.prepare() for m in served.values()))
        try:
            yield
        finally:
            await asyncio.gather(*(m.aclose() for m in served.values()))

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ],
        exception_handlers={
            APIError: on_api_error,
            HTTPException: on_http_error,
            _Disconnected: on_disconnect,
            RequestRefused: on_refused,
            MoAError: on_run_error,
            Exception: on_bug,
        },
        lifespan=lifespan,
    )


async def _first(upstream: AsyncGenerator[MoAEvent, None]) -> Token | Completed | None:
    async for event in upstream:
        if isinstance(event, (Token, Completed)):
            return event
    return None


def _chunk(header: Mapping[str, Any], choices: list[Any], **extra: Any) -> bytes:
    body = {
        "id": header["id"],
        "object": "chat.completion.chunk",
        "created": header["created"],
        "model": header["model"],
        "system_fingerprint": None,
        "choices": choices,
        **extra,
    }
    return b"data: " + json_bytes(body) + b"\n\n"


def _delta(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
    return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]


async def _sse(
    upstream: AsyncGenerator[MoAEvent, None],
    first: Token | Completed | None,
    header: Mapping[str, Any],
    include_usage: bool,
) -> AsyncIterator[bytes]:
    usage: dict[str, Any] = {"usage": None} if include_usage else {}
    yield _chunk(header, _delta({"role": "assistant", "content": ""}), **usage)
    result: MoAResult | None = None
    try:
        event: MoAEvent | None = first
        pending = [first] if first is not None else []
        while True:
            if pending:
                event = pending.pop()
            else:
                event = await anext(upstream, None)
                if event is None:
                    break
            if isinstance(event, Token) and event.text:
                yield _chunk(header, _delta({"content": event.text}), **usage)
            elif isinstance(event, Completed):
                result = event.result
        if result is None:
            raise MoAError("the mixture ended without a result")
    except Exception as exc:  # the status line is gone: report in the stream
        yield b"data: " + json_bytes(_api_error(exc).body) + b"\n\n"
        return
    finally:
        with contextlib.suppress(Exception):
            await upstream.aclose()
    yield _chunk(header, _delta({}, "stop"), **usage)
    if include_usage:
        yield _chunk(header, [], usage=_usage(result))
    yield b"data: [DONE]\n\n"
