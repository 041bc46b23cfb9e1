"""The OpenAI-compatible server, driven by the official `openai` client (sync and async,
streaming and not) and by raw HTTP; the server runs uvicorn in a thread on 127.0.0.1 and
its mixtures call the loopback fake provider."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from moa import MixtureOfAgents, Settings
from moa.adapters.server import create_app
from moa.testing import FakeProvider, Reply
from tests.conftest import CANARY_KEY

MIX = """
proposal_layers:
  - neurons:
    - {model: "meta-llama/A", prompt: "SYS-A"}
    - {model: "mistralai/B"}
aggregation_layer:
  model: "meta-llama/AGG"
"""
SOLO = """
proposal_layers:
  - neurons:
    - {model: "solo/P"}
aggregation_layer:
  model: "solo/AGG"
"""
SERVER_KEY = "moa-server-key-5d1e"


class ServerThread:
    """uvicorn serving `app` from a thread, on a socket bound to a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive(), "the server did not start"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def _mixtures(provider: FakeProvider) -> dict[str, MixtureOfAgents]:
    settings = Settings(
        provider_api_key=SecretStr(CANARY_KEY),
        base_url=provider.base_url,
        request_timeout=30.0,
        max_retries=0,
    )
    return {
        name: MixtureOfAgents.from_config(text, is_file_path=False, settings=settings)
        for name, text in [("mix", MIX), ("solo", SOLO)]
    }


@pytest.fixture(scope="module")
def server(_moa_fake_provider_server: FakeProvider) -> Iterator[ServerThread]:
    with ServerThread(create_app(_mixtures(_moa_fake_provider_server))) as running:
        yield running


@pytest.fixture(scope="module")
def locked(_moa_fake_provider_server: FakeProvider) -> Iterator[ServerThread]:
    app = create_app(_mixtures(_moa_fake_provider_server), api_key=SERVER_KEY, prepare=False)
    with ServerThread(app) as running:
        yield running


def client(server: ServerThread, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def aclient(server: ServerThread) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


QUESTION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Why is the sky blue?"},
]


def script_mix(fake: FakeProvider) -> None:
    fake.script("meta-llama/A", Reply("alpha", usage=(10, 1)))
    fake.script("mistralai/B", Reply("beta", usage=(20, 2)))
    fake.script("meta-llama/AGG", Reply("Rayleigh scattering.", usage=(30, 3)))


def test_health_and_models(server: ServerThread) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "models": ["mix", "solo"]}
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["mix", "solo"]
    assert all(m.object == "model" and m.owned_by == "moa" for m in models.data)


def test_sync_client_non_streaming(server: ServerThread, fake: FakeProvider) -> None:
    script_mix(fake)
    completion = client(server).chat.completions.create(model="mix", messages=QUESTION)  # type: ignore[arg-type]
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "mix"
    (choice,) = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "Rayleigh scattering."
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (60, 6)
    assert completion.usage.total_tokens == 66
    request = fake.requests_for("meta-llama/A")[0]
    assert request.system == "SYS-A"
    assert request.last_user == "Why is the sky blue?"
    assert {"role": "system", "content": "Be brief."} in request.messages


def test_every_role_readme_lists_is_accepted(server: ServerThread, fake: FakeProvider) -> None:
    """README's route table: `system`, `developer`, `user`, `assistant` (a developer turn is
    a system turn to the models)."""
    script_mix(fake)
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    completion = client(server).chat.completions.create(model="mix", messages=messages)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "Rayleigh scattering."
    request = fake.requests_for("meta-llama/A")[0]
    assert {"role": "system", "content": "Be brief."} in request.messages
    assert {"role": "assistant", "content": "Hello."} in request.messages


def test_sync_client_streaming_with_usage(server: ServerThread, fake: FakeProvider) -> None:
    script_mix(fake)
    stream = client(server).chat.completions.create(
        model="mix",
        messages=QUESTION,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == "mix" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Rayleigh scattering."
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (60, 6)
    assert all(c.usage is None for c in chunks[:-1])


async def test_async_client_streaming_and_not(server: ServerThread, fake: FakeProvider) -> None:
    async with aclient(server) as api:
        fake.script("solo/AGG", "async answer")
        completion = await api.chat.completions.create(
            model="solo", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "async answer"
        fake.script("solo/AGG", "streamed answer")
        stream = await api.chat.completions.create(
            model="solo", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(pieces) == "streamed answer"


def test_stream_wire_format(server: ServerThread, fake: FakeProvider) -> None:
    body = {"model": "solo", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)  # only with stream_options.include_usage
    assert chunks[-1]["choices"][0] == {
        "index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        (b"{not json", 400, None, None),
        (b"[1, 2]", 400, None, None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model", None),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "model",
         "model_not_found"),
        (b'{"model": "mix"}', 400, "messages", None),
        (b'{"model": "mix", "messages": [{"role": "robot", "content": "x"}]}', 400,
         "messages[0].role", None),
        (b'{"model": "mix", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
         400, "stream", None),
        (b'{"model": "mix", "messages": [{"role": "assistant", "content": "x"}]}', 400,
         "messages", None),
        (b'{"model": "mix", "messages": [{"role": "user", "content": "x"}], "n": 2}', 400, "n",
         None),
    ],
)  # fmt: skip
def test_malformed_requests_get_openai_error_bodies(
    server: ServerThread, body: bytes, status: int, param: str | None, code: str | None
) -> None:
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and error["code"] == code
    assert error["message"]


def test_malformed_request_through_the_client(server: ServerThread) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).chat.completions.create(model="mix", messages=[])
    assert caught.value.status_code == 400
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )


def test_unknown_route_and_method(server: ServerThread) -> None:
    missing = httpx.get(f"{server.url}/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    wrong = httpx.get(f"{server.url}/v1/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_failed_run_gets_an_error_status(server: ServerThread, fake: FakeProvider) -> None:
    fake.script("solo/P", Reply(status=500, error_message="provider down"))
    with pytest.raises(openai.APIStatusError) as caught:
        client(server).chat.completions.create(
            model="solo", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 502
    assert "upstream error (HTTP 500)" in caught.value.message
    assert "provider down" not in caught.value.message  # upstream text stays in the log
    fake.script("solo/P", Reply(status=429, error_message="slow down"))
    with pytest.raises(openai.RateLimitError):
        client(server).chat.completions.create(
            model="solo", messages=[{"role": "user", "content": "x"}], stream=True
        )  # failed before the first token: a real status, not an in-stream error


def test_error_after_the_stream_started_is_sent_in_stream(
    server: ServerThread, fake: FakeProvider
) -> None:
    # the aggregator streams a piece, then its stream ends without finishing
    fake.script("solo/AGG", Reply(content="partial answer", fault="no_done"))
    body = {"model": "solo", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    raw = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    assert raw.status_code == 200
    events = [e for e in raw.text.split("\n\n") if e]
    assert "data: [DONE]" not in events
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and error["message"] == (
        "the aggregator failed: aggregation_layer (solo/AGG): invalid response"
    )
    fake.script("solo/AGG", Reply(content="partial answer", fault="no_done"))
    received = []
    with pytest.raises(openai.APIError, match="invalid response"):
        for chunk in client(server).chat.completions.create(
            model="solo", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "partial answer"


def test_bearer_auth(locked: ServerThread, fake: FakeProvider) -> None:
    assert httpx.get(f"{locked.url}/health").status_code == 200  # liveness needs no key
    with pytest.raises(openai.AuthenticationError) as caught:
        client(locked, key="wrong-key-123").models.list()
    assert "wrong-key-123" not in str(caught.value.body)
    missing = httpx.get(f"{locked.url}/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert SERVER_KEY not in missing.text
    fake.script("solo/AGG", "allowed")
    completion = client(locked, key=SERVER_KEY).chat.completions.create(
        model="solo", messages=[{"role": "user", "content": "x"}]
    )
    assert completion.choices[0].message.content == "allowed"


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_cancels_upstream_calls(
    server: ServerThread, fake: FakeProvider, stream: bool
) -> None:
    fake.set_default(Reply(latency=30))
    body = json.dumps(
        {"model": "mix", "messages": [{"role": "user", "content": "slow"}], "stream": stream}
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        upstream = fake.wait_for_requests(2, timeout=30)  # both proposers are in flight
        assert {r.model for r in upstream} == {"meta-llama/A", "mistralai/B"}
    deadline = time.monotonic() + 20
    while not all(r.cancelled for r in fake.requests):
        assert time.monotonic() < deadline, f"upstream calls not cancelled: {fake.requests}"
        time.sleep(0.02)
    assert not fake.requests_for("meta-llama/AGG")  # the run stopped, the aggregator never ran


def test_moa_serve_builds_every_named_mixture(
    fake: FakeProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """`moa serve -c NAME=PATH ...` serves each config under its name, with the env's key."""
    import uvicorn
    from click.testing import CliRunner
    from starlette.testclient import TestClient

    from moa.cli import cli

    (tmp_path / "first.yaml").write_text(MIX)
    (tmp_path / "second.yaml").write_text(SOLO)
    monkeypatch.setenv("BASE_URL", fake.base_url)
    monkeypatch.setenv("PROVIDER_API_KEY", CANARY_KEY)
    monkeypatch.setenv("MOA_SERVER_API_KEY", SERVER_KEY)
    started: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    result = CliRunner().invoke(
        cli, ["serve", "-c", "first.yaml", "-c", "other=second.yaml", "--port", "8123"]
    )
    assert result.exit_code == 0, result.output
    assert (started["host"], started["port"]) == ("127.0.0.1", 8123)
    assert "serving first, other" in result.stderr and "bearer token required" in result.stderr
    assert SERVER_KEY not in result.output
    fake.script("solo/AGG", "served")
    with TestClient(started["app"]) as http:
        auth = {"Authorization": f"Bearer {SERVER_KEY}"}
        models = http.get("/v1/models", headers=auth).json()
        assert [m["id"] for m in models["data"]] == ["first", "other"]
        body = {"model": "other", "messages": [{"role": "user", "content": "x"}]}
        answer = http.post("/v1/chat/completions", json=body, headers=auth).json()
        assert answer["choices"][0]["message"]["content"] == "served"


def test_moa_serve_usage_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import sys

    import uvicorn
    from click.testing import CliRunner

    from moa.cli import cli

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    (tmp_path / "a.yaml").write_text(SOLO)
    (tmp_path / "bad.yaml").write_text("proposal_layers: []\n")
    twice = CliRunner().invoke(cli, ["serve", "-c", "a.yaml", "-c", "a=a.yaml"])
    assert twice.exit_code == 2 and "two mixtures are named 'a'" in twice.output
    bad = CliRunner().invoke(cli, ["serve", "-c", "bad.yaml"])
    assert bad.exit_code == 2 and "invalid moa config in bad.yaml" in bad.stderr
    monkeypatch.setitem(sys.modules, "moa.presets", None)
    none = CliRunner().invoke(cli, ["serve"])
    assert none.exit_code == 2 and "no config given" in none.stderr


def test_moa_serve_without_the_server_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from click.testing import CliRunner

    from moa.cli import cli

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    result = CliRunner().invoke(cli, ["serve", "-c", "x.yaml"])
    assert result.exit_code == 2
    assert "pip install 'moa-llm[server]'" in result.stderr and "uvicorn" in result.stderr


def test_moa_serve_without_config_serves_the_default_mixture_as_moa(
    fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README, "Command line": without `-c`, `moa serve` serves moa's default mixture as model
    `moa` and says on stderr which one (with a key set: the example config)."""
    import uvicorn
    from click.testing import CliRunner
    from starlette.testclient import TestClient

    from moa.cli import cli

    monkeypatch.setenv("BASE_URL", fake.base_url)
    monkeypatch.setenv("PROVIDER_API_KEY", CANARY_KEY)
    started: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 0, result.output
    assert "using the example config" in result.stderr and "serving moa " in result.stderr
    with TestClient(started["app"]) as http:
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["moa"]
        body = {"model": "moa", "messages": [{"role": "user", "content": "x"}]}
        answer = http.post("/v1/chat/completions", json=body).json()
    expected = "answer from meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"
    assert answer["choices"][0]["message"]["content"] == expected
