"""How the fake provider writes a reply's body: streams, and the faults that need more than a
status code (an upstream echoing the caller's API key in every body shape, a stream kept
alive by comments only).

The echo faults answer with the bearer token the request carried, so a test proves that the
key moa actually sent is redacted, whichever variable it came from. `Reply.echo_pad` puts
that many filler characters before the key, to place it across a truncation cut.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

    from moa.testing._server import Reply as _Reply
    from moa.testing._server import _Record as _Rec

__all__ = ["ECHO_FAULTS", "echo_content", "echo_key", "hang", "send_echo", "send_stream", "trickle"]

ECHO_FAULTS = frozenset({"echo_text", "echo_sse", "echo_error", "echo_partial", "echo_content"})
_PIECES = re.compile(r"\S+\s*|\s+")
_KEEP_ALIVE_EVERY = 0.05  # seconds between `: keep-alive` comments (unless stream_delay is set)


def echo_key(rec: _Rec, reply: _Reply) -> str:
    """The filler and the API key the request carried (`<no key>` without one)."""
    auth = rec.headers.get("authorization", "")
    key = auth.removeprefix("Bearer ").strip() or "<no key>"
    return "x" * reply.echo_pad + " ".join([key] * reply.echo_times)


def echo_content(rec: _Rec, reply: _Reply) -> str:
    """The answer of `echo_content`: a normal answer that quotes the key."""
    return f"Your key is {echo_key(rec, reply)}, keep it safe."


async def send_echo(
    request: web.BaseRequest, rec: _Rec, reply: _Reply, error_body: bytes
) -> web.StreamResponse:
    """The body shapes of the echo faults other than `echo_content` (a normal answer)."""
    from aiohttp import web

    echoed = echo_key(rec, reply)
    if reply.fault == "echo_error":
        status = reply.status if reply.status != 200 else 500
        resp = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        body = error_body
    elif reply.fault == "echo_text":  # a 2xx body that is not JSON (a misconfigured proxy)
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        body = f"upstream confused, you sent {echoed}".encode()
    elif reply.fault == "echo_sse":  # an event that is not JSON (same body without stream)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        role = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
        body = b"data: " + json.dumps(role).encode() + f"\n\ndata: not json {echoed}\n\n".encode()
    else:  # echo_partial: cut off inside the event / object that quotes the key
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if rec.stream:
            chunk = {"choices": [{"index": 0, "delta": {"content": "Hello"}}]}
            body = b"data: " + json.dumps(chunk).encode() + b"\n\n"
            body += b'data: {"choices": [{"index": 0, "delta": {"content": "' + echoed.encode()
        else:
            body = b'{"choices": [{"message": {"content": "' + echoed.encode()
    await resp.prepare(request)
    rec.finished = time.monotonic()
    await resp.write(body)
    await resp.write_eof()
    return resp


async def send_stream(
    request: web.BaseRequest, rec: _Rec, reply: _Reply, content: str | None,
    usage: dict[str, int], base: dict[str, Any], hdrs: dict[str, str],
) -> web.StreamResponse:  # fmt: skip
    """An SSE answer in word pieces (`echo_content`: 3-character pieces, so the key is split
    across deltas), with the stream faults applied."""
    from aiohttp import web

    opts = rec.body.get("stream_options") if rec.body else None
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    sse = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    resp = web.StreamResponse(headers={**hdrs, **sse})
    await resp.prepare(request)
    fault = reply.fault

    async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
        chunk = {**base, "object": "chat.completion.chunk", "choices": choices, **extra}
        if include_usage and "usage" not in extra:
            chunk["usage"] = None
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

    def delta(d: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": d, "finish_reason": finish}]

    try:
        if fault == "malformed":
            await resp.write(b'data: {"not": "json"\n\n')
        elif fault == "empty_choices":
            await send([], **({"usage": usage} if include_usage else {}))
        else:
            first = {"role": "assistant", "content": "" if content is not None else None}
            await send(delta(first))
            text = content or ""
            pieces = (
                [text[i : i + 3] for i in range(0, len(text), 3)]
                if fault == "echo_content"
                else _PIECES.findall(text)
            )
            for i, piece in enumerate(pieces):
                if i and reply.stream_delay > 0:
                    await asyncio.sleep(reply.stream_delay)
                await send(delta({"content": piece}))
                if fault in {"hang_after_first_token", "keep_alive"}:
                    break
            if fault == "hang_after_first_token":
                await hang()
            if fault == "keep_alive":  # alive for ever, never another token
                while True:
                    await asyncio.sleep(reply.stream_delay or _KEEP_ALIVE_EVERY)
                    await resp.write(b": keep-alive\n\n")
            if fault != "no_done":
                await send(delta({}, "stop"))
                if include_usage:
                    await send([], usage=usage)
        rec.finished = time.monotonic()  # before the last bytes: a client never sees None
        if fault != "no_done":
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionError:  # client went away mid-stream
        rec.cancelled = True
        rec.finished = time.monotonic()
    return resp


async def trickle(request: web.BaseRequest, reply: _Reply) -> web.StreamResponse:
    """`keep_alive` without streaming: a 200 whose JSON body never comes, one space at a time
    (JSON allows leading whitespace), so only a total limit ends it."""
    from aiohttp import web

    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    while True:
        await asyncio.sleep(reply.stream_delay or _KEEP_ALIVE_EVERY)
        await resp.write(b" ")


async def hang() -> web.StreamResponse:
    """Wait until cancelled (client disconnect or server stop)."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")  # pragma: no cover
