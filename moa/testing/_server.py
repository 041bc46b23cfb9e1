"""A loopback fake OpenAI-compatible provider for tests.

:class:`FakeProvider` runs a real HTTP server (``aiohttp.web``) on 127.0.0.1 in
its own daemon thread with its own event loop, so server-side latencies never
compete with the code under test.  Replies are scripted per model
(:meth:`FakeProvider.script`), computed (:meth:`FakeProvider.respond_with`) or
defaulted (:meth:`FakeProvider.set_default`); every request is recorded with
server-side timestamps so tests can assert on concurrency and cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Self

from moa.testing._faults import (
    ECHO_FAULTS,
    echo_content,
    echo_key,
    hang,
    send_echo,
    send_stream,
    trickle,
)

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["FakeProvider", "Fault", "RecordedRequest", "Reply"]

Fault = Literal[
    "reset", "hang", "hang_after_first_token", "malformed",
    "empty_choices", "null_content", "empty_content", "no_done", "keep_alive",
    "echo_text", "echo_sse", "echo_error", "echo_partial", "echo_content",
]  # fmt: skip
"""Failure shapes of a reply. `keep_alive`: one token, then only `: keep-alive` comments for
ever (without `stream`: a 200 whose body trickles in one space at a time). The `echo_*`
faults quote the API key the request carried (after `Reply.echo_pad` filler characters,
`Reply.echo_times` times):
`echo_text` a 2xx body that is not JSON, `echo_sse` an SSE event that is not JSON,
`echo_error` a JSON error body (status `Reply.status`, 500 if that is 200), `echo_partial`
an answer cut off inside the event quoting it, `echo_content` a normal answer quoting it
(streamed in 3-character pieces)."""

_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_MODELS_PATHS = frozenset({"/v1/models", "/models"})
_ERROR_KINDS: dict[int, tuple[str, str]] = {  # status -> (error.type, error.code)
    400: ("invalid_request_error", "bad_request"), 401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"), 404: ("invalid_request_error", "not_found"),
    408: ("timeout_error", "timeout"), 409: ("invalid_request_error", "conflict"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("rate_limit_error", "rate_limit_exceeded"), 500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"), 503: ("server_error", "service_unavailable"),
}  # fmt: skip


@dataclass(frozen=True)
class Reply:
    """One scripted response.

    ``content=None`` means the default text ``"answer from <model>"``;
    ``latency`` is slept (server side) before the response headers are sent;
    a non-200 ``status`` produces an OpenAI-style error body; ``usage`` is
    ``(prompt_tokens, completion_tokens)`` (default: whitespace word counts);
    ``fault`` is one of :data:`Fault`.
    """

    content: str | None = None
    latency: float = 0.0
    status: int = 200
    fault: Fault | None = None
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    stream_delay: float = 0.0
    usage: tuple[int, int] | None = None
    error_message: str | None = None
    echo_pad: int = 0
    echo_times: int = 1


def _text(content: Any) -> str | None:
    """Plain text of a message ``content`` (a string or a list of text parts)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return str(content)


@dataclass(frozen=True)
class RecordedRequest:
    """An immutable snapshot of one request as seen by the server.

    ``headers`` keys are lower-cased; ``started``/``finished`` are the server's
    ``time.monotonic()``; ``cancelled`` is true when the client went away (or
    the server was stopped) before the response was complete.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: Mapping[str, Any] | None
    model: str | None
    started: float
    finished: float | None
    stream: bool
    cancelled: bool

    @property
    def messages(self) -> list[dict[str, Any]]:
        """``body["messages"]`` (empty list if absent)."""
        msgs = (self.body or {}).get("messages")
        return [m for m in msgs if isinstance(m, dict)] if isinstance(msgs, list) else []

    @property
    def system(self) -> str | None:
        """Content of the first system message, or ``None``."""
        systems = (m for m in self.messages if m.get("role") == "system")
        return next((_text(m.get("content")) for m in systems), None)

    @property
    def last_user(self) -> str | None:
        """Content of the last user message, or ``None``."""
        users = [m for m in self.messages if m.get("role") == "user"]
        return _text(users[-1].get("content")) if users else None


@dataclass
class _Record:
    method: str
    path: str
    headers: Mapping[str, str]
    body: Mapping[str, Any] | None
    model: str | None
    started: float
    stream: bool
    finished: float | None = None
    cancelled: bool = False
    deliberate_abort: bool = False

    def snapshot(self) -> RecordedRequest:
        return RecordedRequest(
            self.method, self.path, self.headers, self.body, self.model,
            self.started, self.finished, self.stream, self.cancelled,
        )  # fmt: skip


def _error_body(status: int, message: str) -> bytes:
    fallback = ("server_error" if status >= 500 else "invalid_request_error", str(status))
    kind, code = _ERROR_KINDS.get(status, fallback)
    error = {"message": message, "type": kind, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


class FakeProvider:
    """A fake OpenAI-compatible chat-completions server on a loopback port.

    Use as a context manager (``with FakeProvider() as fp:``) or call
    :meth:`start` / :meth:`stop`.  All public methods are thread-safe.
    ``default_latency`` is the latency of the built-in fallback reply used when
    no queue, responder or :meth:`set_default` reply applies.
    """

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, default_latency: float = 0.0
    ) -> None:
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._default_latency = default_latency
        self._lock = threading.Condition()
        self._queues: dict[str, deque[Reply]] = {}
        self._responders: dict[str | None, Callable[[RecordedRequest], Reply | str]] = {}
        self._default: Reply | None = None
        self._records: list[_Record] = []
        self._known_models: dict[str, None] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.ServerRunner | None = None
        self._inflight: set[asyncio.Transport] = set()

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> Self:
        """Start the server thread (idempotent) and return ``self``."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        errors: list[BaseException] = []
        thread = threading.Thread(
            target=self._run, args=(ready, errors), name="moa-fake-provider", daemon=True
        )
        thread.start()
        ready.wait()
        if errors:
            thread.join()
            raise errors[0]
        self._thread = thread
        return self

    def stop(self) -> None:
        """Stop the server, cancelling in-flight handlers, and join the thread (idempotent)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(Exception):  # best effort; the loop is stopped below anyway
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=5.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10.0)
        if thread.is_alive():  # pragma: no cover - only if user code blocks the server loop
            raise RuntimeError("FakeProvider server thread did not stop")
        self._thread = self._loop = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (only meaningful once started)."""
        return self._port if self._port is not None else self._requested_port

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/v1``; raises ``RuntimeError`` before :meth:`start`."""
        if self._port is None:
            raise RuntimeError("FakeProvider is not started")
        return f"http://{self._host}:{self._port}/v1"

    # -- scripting ---------------------------------------------------------
    def script(self, model: str, *replies: Reply | str) -> None:
        """Append replies to ``model``'s FIFO queue (a ``str`` means ``Reply(content=str)``)."""
        with self._lock:
            q = self._queues.setdefault(model, deque())
            q.extend(Reply(content=r) if isinstance(r, str) else r for r in replies)
            self._known_models.setdefault(model, None)

    def respond_with(self, model: str | None, fn: Callable[[RecordedRequest], Reply | str]) -> None:
        """Answer ``model`` with ``fn(request)`` whenever its queue is empty.

        ``model=None`` sets the global responder, used by every model without its own.
        ``fn`` runs on the server thread; if it raises, the client gets a 500.
        """
        with self._lock:
            self._responders[model] = fn
            if model is not None:
                self._known_models.setdefault(model, None)

    def set_default(self, reply: Reply) -> None:
        """Reply used for models with no queued reply and no responder."""
        with self._lock:
            self._default = reply

    def reset(self) -> None:
        """Clear queues, responders, the default reply and recorded requests."""
        with self._lock:
            self._queues.clear()
            self._responders.clear()
            self._default = None
            self._records.clear()
            self._known_models.clear()

    # -- inspection --------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of all recorded requests in arrival order.

        Chat completions and ``GET /v1/models`` (tell them apart by ``path``).
        """
        with self._lock:
            return [r.snapshot() for r in self._records]

    def requests_for(self, model: str) -> list[RecordedRequest]:
        """Snapshot of the chat requests for ``model``."""
        with self._lock:
            recs = [r for r in self._records if r.model == model and r.path in _CHAT_PATHS]
            return [r.snapshot() for r in recs]

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``n`` chat requests have arrived; return all chat requests.

        Raises ``TimeoutError`` after ``timeout`` seconds.  From async code use
        ``await asyncio.to_thread(provider.wait_for_requests, n)``.
        """

        def chats() -> list[_Record]:
            return [r for r in self._records if r.path in _CHAT_PATHS]

        with self._lock:
            if not self._lock.wait_for(lambda: len(chats()) >= n, timeout):
                got = len(chats())
                raise TimeoutError(f"expected {n} chat requests, got {got} after {timeout}s")
            return [r.snapshot() for r in chats()]

    # -- server thread -----------------------------------------------------
    def _run(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._startup())
            except BaseException as exc:  # reported to start()
                errors.append(exc)
                return
            self._loop = loop
            ready.set()
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            ready.set()

    async def _startup(self) -> None:
        from aiohttp import web

        # handler_cancellation: aiohttp (>= 3.9) no longer cancels handlers when
        # the client disconnects unless asked to; we need it to see disconnects.
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def _shutdown(self) -> None:
        for transport in list(self._inflight):  # connection_lost cancels their handler tasks
            transport.abort()
        await asyncio.sleep(0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _socket_nodelay(self) -> list[bool]:
        """TCP_NODELAY of every open server-side connection (for tests)."""
        result: list[bool] = []
        for conn in self._runner.server.connections if self._runner and self._runner.server else []:
            sock = conn.transport.get_extra_info("socket") if conn.transport else None
            if sock is not None:
                result.append(bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
        return result

    # -- request handling --------------------------------------------------
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        from aiohttp import web

        started = time.monotonic()
        headers = MappingProxyType({k.lower(): v for k, v in request.headers.items()})
        if request.method == "GET" and request.path in _MODELS_PATHS:
            with self._lock:
                rec = _Record("GET", request.path, headers, None, None, started, False, started)
                self._records.append(rec)
                data = [
                    {"id": m, "object": "model", "created": 0, "owned_by": "moa-fake"}
                    for m in self._known_models
                ]
            return web.json_response({"object": "list", "data": data})
        if request.method != "POST" or request.path not in _CHAT_PATHS:
            msg = f"Unknown request URL: {request.method} {request.path}"
            body404 = _error_body(404, msg)
            return web.Response(status=404, body=body404, content_type="application/json")
        try:
            body: Any = json.loads(await request.read())
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else None
        model = body.get("model") if body is not None else None
        model = model if isinstance(model, str) else None
        stream = body is not None and body.get("stream") is True
        rec = _Record("POST", request.path, headers, body, model, started, stream)
        with self._lock:
            self._records.append(rec)
            if rec.model is not None:
                self._known_models.setdefault(rec.model, None)
            self._lock.notify_all()
        transport = request.transport
        if transport is not None:
            self._inflight.add(transport)
        try:
            return await self._respond(request, rec)
        except asyncio.CancelledError:
            rec.cancelled = not rec.deliberate_abort
            raise
        finally:
            if rec.finished is None:
                rec.finished = time.monotonic()
            if transport is not None:
                self._inflight.discard(transport)

    def _pick(self, rec: _Record) -> Reply:
        with self._lock:
            queue = self._queues.get(rec.model) if rec.model is not None else None
            if queue:
                return queue.popleft()
            fn = self._responders.get(rec.model) or self._responders.get(None)
            default = self._default or Reply(latency=self._default_latency)
            snap = rec.snapshot()
        if fn is None:
            return default
        result = fn(snap)
        return Reply(content=result) if isinstance(result, str) else result

    async def _respond(self, request: web.BaseRequest, rec: _Record) -> web.StreamResponse:
        from aiohttp import web

        def error(status: int, msg: str, extra: Mapping[str, str] | None = None) -> web.Response:
            body = _error_body(status, msg)
            return web.Response(
                status=status, body=body, headers=extra, content_type="application/json"
            )

        if rec.body is None:
            return error(400, "We could not parse the JSON body of your request.")
        if rec.model is None:
            return error(400, "you must provide a model parameter")
        try:
            reply = self._pick(rec)
        except Exception as exc:  # surfaced to the client
            return error(500, f"responder failed: {exc!r}")
        hdrs = dict(reply.headers)
        if reply.retry_after is not None:
            hdrs["Retry-After"] = f"{reply.retry_after:g}"
            hdrs["retry-after-ms"] = str(int(reply.retry_after * 1000))
        if reply.latency > 0:
            await asyncio.sleep(reply.latency)
        if reply.fault == "reset":
            return await self._reset(request, rec)
        if reply.fault == "hang" or (reply.fault == "hang_after_first_token" and not rec.stream):
            return await hang()
        if reply.fault == "keep_alive" and not rec.stream:
            return await trickle(request, reply)
        if reply.fault in ECHO_FAULTS - {"echo_content"}:
            status = reply.status if reply.status != 200 else 500
            body = _error_body(status, f"invalid key {echo_key(rec, reply)}")
            return await send_echo(request, rec, reply, body)
        if reply.status != 200:
            msg = reply.error_message or f"fake error {reply.status}"
            return await self._send(request, rec, error(reply.status, msg, hdrs))
        content: str | None = f"answer from {rec.model}" if reply.content is None else reply.content
        if reply.fault == "echo_content":
            content = echo_content(rec, reply)
        elif reply.fault == "null_content":
            content = None
        elif reply.fault == "empty_content":
            content = ""
        msg_words = sum(_words(_text(m.get("content"))) for m in rec.snapshot().messages)
        prompt, completion = reply.usage or (msg_words, max(1, _words(content)))
        total = prompt + completion
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        base = {"id": cid, "created": int(time.time()), "model": rec.model}
        if rec.stream:
            return await send_stream(request, rec, reply, content, usage, base, hdrs)
        if reply.fault == "malformed":
            resp = web.Response(
                body=b'{"not": "json"', headers=hdrs, content_type="application/json"
            )
            return await self._send(request, rec, resp)
        message = {"role": "assistant", "content": content}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        choices = [] if reply.fault == "empty_choices" else [choice]
        payload = {**base, "object": "chat.completion", "choices": choices, "usage": usage}
        return await self._send(request, rec, web.json_response(payload, headers=hdrs))

    async def _send(
        self, request: web.BaseRequest, rec: _Record, resp: web.Response
    ) -> web.Response:
        await resp.prepare(request)
        rec.finished = time.monotonic()  # before the body goes out: a client never sees None
        await resp.write_eof()
        return resp

    async def _reset(self, request: web.BaseRequest, rec: _Record) -> web.StreamResponse:
        rec.deliberate_abort = True
        rec.finished = time.monotonic()
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0 -> close() sends RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return await hang()  # connection_lost cancels this task
