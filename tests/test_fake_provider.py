"""Tests for the loopback fake OpenAI-compatible provider (moa.testing._server)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from moa.testing._server import FakeProvider, RecordedRequest, Reply

MSGS = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "an answer"},
    {"role": "user", "content": "second question here"},
]


@pytest.fixture
def fp() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


def post(
    fp: FakeProvider, body: dict[str, Any] | bytes, path: str = "/v1/chat/completions"
) -> tuple[int, dict[str, str], bytes]:
    """Synchronous POST via urllib; returns (status, headers, body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = f"http://127.0.0.1:{fp.port}{path}"
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def chat(fp: FakeProvider, model: str, **extra: Any) -> dict[str, Any]:
    status, _, raw = post(fp, {"model": model, "messages": MSGS, **extra})
    assert status == 200, raw
    result: dict[str, Any] = json.loads(raw)
    return result


def content_of(resp: dict[str, Any]) -> Any:
    return resp["choices"][0]["message"]["content"]


def sse_events(raw: bytes) -> list[str]:
    text = raw.decode()
    return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]


async def stream_events(
    session: aiohttp.ClientSession, fp: FakeProvider, model: str, **extra: Any
) -> list[str]:
    body = {"model": model, "messages": MSGS, "stream": True, **extra}
    async with session.post(f"{fp.base_url}/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        return sse_events(await resp.read())


def wait_until(pred: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_default_reply_and_record(fp: FakeProvider) -> None:
    resp = chat(fp, "some-model")
    assert resp["id"].startswith("chatcmpl-")
    assert resp["object"] == "chat.completion" and resp["model"] == "some-model"
    assert isinstance(resp["created"], int)
    assert resp["choices"][0]["finish_reason"] == "stop"
    message = resp["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "answer from some-model"}
    # 2 + 2 + 2 + 3 prompt words, 3 completion words
    assert resp["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    [rec] = fp.requests
    assert (rec.method, rec.path, rec.model, rec.stream, rec.cancelled) == (
        "POST", "/v1/chat/completions", "some-model", False, False,
    )  # fmt: skip
    assert rec.finished is not None and rec.finished >= rec.started
    assert rec.headers["content-type"] == "application/json"
    assert rec.messages == MSGS and rec.system == "be brief"
    assert rec.last_user == "second question here"
    assert fp.base_url == f"http://127.0.0.1:{fp.port}/v1"


def test_script_queue_per_model_and_usage(fp: FakeProvider) -> None:
    fp.script("a", "a1", Reply(content="a2", usage=(7, 5)))
    fp.script("b", "b1")
    fp.script("a", "a3")
    assert content_of(chat(fp, "b")) == "b1"
    assert content_of(chat(fp, "a")) == "a1"
    second = chat(fp, "a")
    assert content_of(second) == "a2"
    assert second["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    status, _, raw = post(fp, {"model": "a", "messages": MSGS}, path="/chat/completions")
    assert status == 200 and content_of(json.loads(raw)) == "a3"
    assert content_of(chat(fp, "a")) == "answer from a"  # queue exhausted -> default
    assert [r.model for r in fp.requests] == ["b", "a", "a", "a", "a"]
    assert [r.path for r in fp.requests_for("a")][2] == "/chat/completions"
    assert len(fp.requests_for("b")) == 1


def test_responders_default_and_reset() -> None:
    with FakeProvider(default_latency=0.05) as fp:
        seen: list[RecordedRequest] = []

        def echo(req: RecordedRequest) -> str:
            seen.append(req)
            return f"echo {req.last_user}"

        fp.respond_with("x", echo)
        fp.respond_with(None, lambda req: Reply(content=f"global {req.model}"))
        fp.script("x", "queued first")
        assert content_of(chat(fp, "x")) == "queued first"
        assert content_of(chat(fp, "x")) == "echo second question here"
        assert content_of(chat(fp, "y")) == "global y"
        assert seen[0].model == "x" and seen[0].finished is None
        fp.reset()
        assert fp.requests == []
        assert content_of(chat(fp, "x")) == "answer from x"  # built-in default
        [rec] = fp.requests
        assert rec.finished is not None and rec.finished - rec.started >= 0.05
        fp.set_default(Reply(content="dflt"))
        assert content_of(chat(fp, "z")) == "dflt"
        fp.respond_with("boom", lambda req: 1 / 0)  # type: ignore[arg-type,return-value]
        status, _, raw = post(fp, {"model": "boom", "messages": MSGS})
        assert status == 500 and "ZeroDivisionError" in json.loads(raw)["error"]["message"]


def test_latency_recorded_interval(fp: FakeProvider) -> None:
    fp.script("slow", Reply(content="late", latency=0.25))
    assert content_of(chat(fp, "slow")) == "late"
    [rec] = fp.requests
    assert rec.finished is not None and rec.finished - rec.started >= 0.25


@pytest.mark.asyncio
async def test_concurrent_requests_overlap(fp: FakeProvider) -> None:
    fp.set_default(Reply(latency=0.3))
    async with aiohttp.ClientSession() as session:

        async def one(model: str) -> str:
            body = {"model": model, "messages": MSGS}
            async with session.post(f"{fp.base_url}/chat/completions", json=body) as resp:
                return str((await resp.json())["choices"][0]["message"]["content"])

        results = await asyncio.gather(*(one(f"m{i}") for i in range(4)))
    assert results == [f"answer from m{i}" for i in range(4)]
    recs = fp.wait_for_requests(4)
    finished = [r.finished for r in recs]
    assert all(f is not None for f in finished)
    assert max(r.started for r in recs) < min(f for f in finished if f is not None)


@pytest.mark.asyncio
async def test_streaming_concatenation_and_usage(fp: FakeProvider) -> None:
    text = "  Hello,  world!\nSecond line\there. "
    fp.script("s", Reply(content=text, stream_delay=0.02), Reply(content="no usage"))
    async with aiohttp.ClientSession() as session:
        events = await stream_events(fp=fp, session=session, model="s",
                                     stream_options={"include_usage": True})  # fmt: skip
        plain = await stream_events(session, fp, "s")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert "".join(pieces) == text and len(pieces) == 6
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == []
    words = len(text.split())
    assert chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": words,
                                   "total_tokens": 9 + words}  # fmt: skip
    assert plain[-1] == "[DONE]" and all("usage" not in json.loads(e) for e in plain[:-1])
    assert json.loads(plain[-2])["choices"][0]["finish_reason"] == "stop"
    rec = fp.requests[0]
    assert rec.stream and rec.finished is not None
    assert rec.finished - rec.started >= 0.02 * (len(pieces) - 1)


def test_error_status_and_retry_after(fp: FakeProvider) -> None:
    fp.script("r", Reply(status=429, retry_after=1.5, headers={"x-extra": "1"}),
              Reply(status=503, error_message="overloaded"))  # fmt: skip
    status, headers, raw = post(fp, {"model": "r", "messages": MSGS})
    assert status == 429
    assert headers["Retry-After"] == "1.5" and headers["retry-after-ms"] == "1500"
    assert headers["x-extra"] == "1"
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] is None
    assert err["type"] == "rate_limit_error"
    status, _, raw = post(fp, {"model": "r", "messages": MSGS})
    assert status == 503 and json.loads(raw)["error"]["message"] == "overloaded"


def test_invalid_json_models_and_404(fp: FakeProvider) -> None:
    status, _, raw = post(fp, b"{not json")
    assert status == 400 and "error" in json.loads(raw)
    assert fp.requests[0].body is None
    fp.script("scripted", "x")
    fp.respond_with("responded", lambda r: "y")
    chat(fp, "used")
    with urllib.request.urlopen(f"{fp.base_url}/models", timeout=5) as resp:
        models = json.loads(resp.read())
    assert models["object"] == "list"
    assert {m["id"] for m in models["data"]} == {"scripted", "responded", "used"}
    assert models["data"][0] == {"id": "scripted", "object": "model", "created": 0,
                                 "owned_by": "moa-fake"}  # fmt: skip
    assert fp.requests[-1].path == "/v1/models" and fp.requests[-1].method == "GET"
    assert len(fp.wait_for_requests(2)) == 2  # GET /models is not a chat request
    status, _, raw = post(fp, {"x": 1}, path="/v1/embeddings")
    assert status == 404 and "message" in json.loads(raw)["error"]


def test_content_faults(fp: FakeProvider) -> None:
    fp.script("f", Reply(fault="malformed"), Reply(fault="empty_choices"),
              Reply(fault="null_content"), Reply(fault="empty_content"))  # fmt: skip
    status, headers, raw = post(fp, {"model": "f", "messages": MSGS})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert raw == b'{"not": "json"'
    assert chat(fp, "f")["choices"] == []
    assert content_of(chat(fp, "f")) is None
    assert content_of(chat(fp, "f")) == ""


@pytest.mark.asyncio
async def test_stream_faults(fp: FakeProvider) -> None:
    fp.script("f", Reply(content="one two three", fault="no_done"),
              Reply(fault="malformed"), Reply(fault="empty_choices"))  # fmt: skip
    async with aiohttp.ClientSession() as session:
        no_done = await stream_events(session, fp, "f")
        malformed = await stream_events(session, fp, "f")
        empty = await stream_events(session, fp, "f")
    assert "[DONE]" not in no_done
    chunks = [json.loads(e) for e in no_done]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "one two three"
    with pytest.raises(json.JSONDecodeError):
        json.loads(malformed[0])
    assert json.loads(empty[0])["choices"] == [] and empty[-1] == "[DONE]"


def test_reset_fault(fp: FakeProvider) -> None:
    fp.script("f", Reply(fault="reset"))
    conn = http.client.HTTPConnection("127.0.0.1", fp.port, timeout=5)
    body = json.dumps({"model": "f", "messages": MSGS})
    conn.request("POST", "/v1/chat/completions", body=body)
    with pytest.raises(ConnectionError):  # RST: ConnectionResetError / RemoteDisconnected
        conn.getresponse()
    conn.close()
    wait_until(lambda: fp.requests[0].finished is not None)
    assert not fp.requests[0].cancelled
    assert content_of(chat(fp, "f")) == "answer from f"  # server still healthy


@pytest.mark.asyncio
async def test_hang_then_client_disconnect_marks_cancelled(fp: FakeProvider) -> None:
    fp.script("h", Reply(fault="hang"), Reply(fault="hang_after_first_token"))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(f"{fp.base_url}/chat/completions",
                                    json={"model": "h", "messages": MSGS},
                                    timeout=aiohttp.ClientTimeout(total=0.3)):  # fmt: skip
                pass
        body = {"model": "h", "messages": MSGS, "stream": True}
        async with session.post(f"{fp.base_url}/chat/completions", json=body) as resp:
            assert resp.status == 200
            first = await resp.content.readuntil(b"\n\n")
            assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
            second = await resp.content.readuntil(b"\n\n")
            assert json.loads(second[6:])["choices"][0]["delta"] == {"content": "answer "}
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 0.2)
            resp.close()  # drop the connection mid-stream
    await asyncio.to_thread(wait_until, lambda: all(r.finished for r in fp.requests))
    hung, streamed = fp.requests
    assert hung.cancelled and streamed.cancelled and streamed.stream
    # the client's 0.3 s budget includes connecting, so the server-side interval may be shorter
    assert hung.finished is not None and hung.finished - hung.started >= 0.1


def test_stop_while_hanging_is_prompt() -> None:
    fp = FakeProvider().start()
    fp.set_default(Reply(fault="hang"))
    errors: list[BaseException] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", fp.port, timeout=10)
        try:
            conn.request("POST", "/v1/chat/completions", body=json.dumps({"model": "h"}))
            conn.getresponse()
        except BaseException as exc:  # expected: the server went away
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    fp.wait_for_requests(3)
    server_thread = fp._thread
    t0 = time.monotonic()
    fp.stop()
    assert time.monotonic() - t0 < 3.0
    assert server_thread is not None and not server_thread.is_alive()
    for t in threads:
        t.join(5)
    assert len(errors) == 3
    assert all(r.cancelled and r.finished is not None for r in fp.requests)
    fp.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = fp.base_url


def test_lifecycle_and_wait_timeout() -> None:
    fp = FakeProvider()
    assert fp.port == 0
    with fp:
        assert fp.start() is fp and fp.port > 0
        with pytest.raises(TimeoutError):
            fp.wait_for_requests(1, timeout=0.05)
    with fp:  # restartable
        assert content_of(chat(fp, "again")) == "answer from again"


@pytest.mark.asyncio
async def test_tcp_nodelay_on_server_socket(fp: FakeProvider) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # keep-alive connection stays open
            async with session.post(f"{fp.base_url}/chat/completions",
                                    json={"model": "n", "messages": MSGS}) as resp:  # fmt: skip
                assert resp.status == 200
                await resp.read()
        assert fp._loop is not None
        fut = asyncio.run_coroutine_threadsafe(fp._socket_nodelay(), fp._loop)
        flags = await asyncio.wrap_future(fut)
    assert flags and all(flags)


@pytest.fixture
def litellm_mod() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
    os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


@pytest.mark.asyncio
async def test_through_litellm(fp: FakeProvider, litellm_mod: Any) -> None:
    fp.script("some-model", "plain reply", Reply(content="streamed reply here", stream_delay=0.01))
    kwargs: dict[str, Any] = dict(
        model="openai/some-model", api_base=fp.base_url, api_key="sk-test",
        timeout=5, num_retries=0, messages=MSGS,
    )  # fmt: skip
    resp = await litellm_mod.acompletion(**kwargs)
    assert resp.choices[0].message.content == "plain reply"
    assert resp.usage.prompt_tokens == 9 and resp.usage.completion_tokens == 2
    opts = {"include_usage": True}
    stream = await litellm_mod.acompletion(stream=True, stream_options=opts, **kwargs)
    parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(parts) == "streamed reply here"
    recs = fp.requests_for("some-model")
    assert [r.stream for r in recs] == [False, True]
    assert recs[0].headers["authorization"] == "Bearer sk-test"
