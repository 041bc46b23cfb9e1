"""`moa serve` does not trust its clients: bounded bodies, JSON depth and integers, slow-client
timeouts, fields it cannot honour refused by name, failures reported without upstream text,
and non-streaming requests run through `process()` with its retries. Real HTTP clients (raw
sockets, httpx, openai) against uvicorn on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from moa import MixtureOfAgents, Settings
from moa.adapters.server import ServerLimits, create_app, uvicorn_options
from moa.cli import cli
from moa.testing import FakeProvider, Reply
from tests.conftest import CANARY_KEY

SOLO = """
proposal_layers:
  - neurons:
    - {model: "solo/P"}
aggregation_layer:
  model: "solo/AGG"
"""
LIMITS = ServerLimits(
    max_body_bytes=256 * 1024, header_timeout=1.0, body_timeout=1.0, max_connections=1000
)


class LimitedServer:
    """uvicorn with moa's limits, serving from a thread on a free loopback port."""

    def __init__(self, app: Any, limits: ServerLimits) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", **uvicorn_options(limits))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LimitedServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "no server"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def _mixtures(base_url: str, retries: int = 0, timeout: float = 30.0) -> dict[str, MixtureOfAgents]:
    settings = Settings(
        provider_api_key=SecretStr(CANARY_KEY),
        base_url=base_url,
        request_timeout=timeout,
        max_retries=retries,
    )
    return {"solo": MixtureOfAgents.from_config(SOLO, is_file_path=False, settings=settings)}


@pytest.fixture(scope="module")
def server(_moa_fake_provider_server: FakeProvider) -> Iterator[LimitedServer]:
    app = create_app(_mixtures(_moa_fake_provider_server.base_url, retries=2), limits=LIMITS)
    with LimitedServer(app, LIMITS) as running:
        yield running


def post(server: LimitedServer, body: bytes | dict[str, Any], **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return httpx.post(
        f"{server.url}/v1/chat/completions", content=content, headers=headers, timeout=60, **kw
    )


def assert_json_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


USER = [{"role": "user", "content": "q"}]


def test_a_50_mb_body_is_refused_with_413_before_it_is_read(
    server: LimitedServer, fake: FakeProvider
) -> None:
    huge = b'{"model": "solo", "messages": [{"role": "user", "content": "' + b"x" * (50 << 20)
    error = assert_json_error(post(server, huge + b'"}]}'), 413)
    assert "262144 bytes" in error["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield huge[: 1 << 20]
        yield huge[: 1 << 20]

    chunked = httpx.post(f"{server.url}/v1/chat/completions", content=chunks(), timeout=60)
    assert_json_error(chunked, 413)
    assert not fake.requests


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"model": "solo", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "deep"),
        (b'{"model": "solo", "messages": ' + b"[" * 40 + b"]" * 40 + b"}", "deep"),
        (b'{"model": "solo", "seed": ' + b"7" * 5000 + b', "messages": []}', "digits"),
        (b'{"model": "solo", "temperature": NaN, "messages": []}', "NaN"),
        (b'{"model": "solo", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "JSON"),
        (b'{"model": "\\ud83d", "messages": []}', "model"),
        (b'{"model": "solo", "messages": [{"role": "user", "content": "\\udc00"}]}', "surrogate"),
        (b'{"model": "solo", "messages": [{"role": "user", "content": [{"type": "text", '
         b'"text": 5}]}]}', "text"),
        (b'{"model": "solo", "messages": [{"role": "user", "content": "q"}], '
         b'"stream_options": 5}', "stream_options"),
        (b'{"model": "solo", "messages": [{"role": "user", "content": "q"}], "n": "2"}', "'n'"),
    ],
)  # fmt: skip
def test_malformed_requests_get_400_json_never_500(
    server: LimitedServer, fake: FakeProvider, body: bytes, fragment: str
) -> None:
    error = assert_json_error(post(server, body), 400 if fragment != "model" else 404)
    assert fragment in error["message"]
    assert not fake.requests


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("tool_choice", "required"),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("response_format", {"type": "json_object"}),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("web_search_options", {}),
    ],
)
def test_fields_that_change_the_answer_are_refused_by_name(
    server: LimitedServer, fake: FakeProvider, field: str, value: Any
) -> None:
    error = assert_json_error(post(server, {"model": "solo", "messages": USER, field: value}), 400)
    assert error["param"] == field and field in error["message"]
    assert not fake.requests


def test_sampling_parameters_are_accepted_and_ignored(
    server: LimitedServer, fake: FakeProvider
) -> None:
    fake.script("solo/AGG", "fine")
    ignored = {
        "temperature": 0.1, "top_p": 0.5, "max_tokens": 5, "max_completion_tokens": 5,
        "presence_penalty": 1, "frequency_penalty": 1, "seed": 3, "stop": ["x"], "user": "u",
        "logit_bias": {"1": 2}, "metadata": {"a": "b"}, "store": False, "service_tier": "auto",
        "response_format": {"type": "text"}, "tools": [], "tool_choice": "none",
        "parallel_tool_calls": False, "logprobs": False, "modalities": ["text"],
        "reasoning_effort": "low",
    }  # fmt: skip
    response = post(server, {"model": "solo", "messages": USER, **ignored})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "fine"
    for upstream in fake.requests:  # the mixture's config decides, not the client
        assert upstream.body and upstream.body.get("stop") != ["x"]
        assert upstream.body.get("max_tokens") != 5 and upstream.body.get("temperature") != 0.1


def test_non_streaming_requests_run_process_with_its_retries(
    server: LimitedServer, fake: FakeProvider
) -> None:
    fake.script("solo/AGG", Reply(fault="reset"), Reply("after a retry"))
    completion = openai.OpenAI(
        base_url=f"{server.url}/v1", api_key="unused", max_retries=0
    ).chat.completions.create(model="solo", messages=USER)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "after a retry"
    calls = fake.requests_for("solo/AGG")
    assert len(calls) == 2 and not any(c.stream for c in calls)


def test_failures_give_a_stable_message_and_log_the_details(
    server: LimitedServer, fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    upstream_text = "db at 10.0.0.7:5432 refused; trace id 1234"
    fake.set_default(Reply(status=500, error_message=upstream_text))
    with caplog.at_level(logging.WARNING, logger="moa.adapters.server"):
        plain = post(server, {"model": "solo", "messages": USER})
        streamed = post(server, {"model": "solo", "messages": USER, "stream": True})
    for response in (plain, streamed):
        error = assert_json_error(response, 502)
        assert upstream_text not in response.text and "10.0.0.7" not in response.text
        assert error["message"] == (
            "every neuron of proposal_layers[0] failed: proposal_layers[0].neurons[0] (solo/P): "
            "upstream error (HTTP 500)"
        )
    assert upstream_text in caplog.text


def test_connection_and_timeout_failures_name_no_host(
    fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as closed:  # a loopback port nobody listens on
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
    refused = create_app(_mixtures(dead), limits=LIMITS, prepare=False)
    slow = create_app(_mixtures(fake.base_url, timeout=0.2), limits=LIMITS, prepare=False)
    fake.set_default(Reply(latency=5))
    with (
        LimitedServer(refused, LIMITS) as one,
        LimitedServer(slow, LIMITS) as two,
        caplog.at_level(logging.WARNING, logger="moa.adapters.server"),
    ):
        gone = assert_json_error(post(one, {"model": "solo", "messages": USER}), 502)
        late = assert_json_error(post(two, {"model": "solo", "messages": USER}), 504)
    assert gone["message"].endswith("(solo/P): connection failed")
    assert "127.0.0.1" not in gone["message"] and dead.split(":")[-1] not in json.dumps(gone)
    assert late["message"].endswith("(solo/P): timed out")
    assert "127.0.0.1" in caplog.text  # the details are in the server's log


def test_slow_clients_are_cut_off_and_others_still_served(
    server: LimitedServer, fake: FakeProvider
) -> None:
    """400 slowloris connections (headers never finished) are closed after the header
    timeout; a normal client is served meanwhile."""
    slow: list[socket.socket] = []
    try:
        for _ in range(400):
            conn = socket.create_connection(("127.0.0.1", server.port))
            slow.append(conn)
            with contextlib.suppress(OSError):  # on a slow machine it may be closed already
                conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        fake.script("solo/AGG", "served")
        ok = post(server, {"model": "solo", "messages": USER})
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "served"
        deadline = time.monotonic() + 120
        for conn in slow:
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                while conn.recv(4096):  # b"" once the server closed it
                    pass
            except (ConnectionResetError, BrokenPipeError):
                pass
    finally:
        for conn in slow:
            conn.close()


def test_a_slow_body_gets_408(server: LimitedServer, fake: FakeProvider) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"model": '
        )
        conn.settimeout(60)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            piece = conn.recv(4096)
            if not piece:
                break
            reply += piece
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply[:300]
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert not fake.requests


@pytest.fixture
def cli_env(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASE_URL", fake.base_url)
    monkeypatch.setenv("PROVIDER_API_KEY", CANARY_KEY)


@pytest.mark.parametrize(
    ("host", "key", "warned"),
    [("0.0.0.0", None, True), ("::", None, True), ("0.0.0.0", "k-123456", False),
     ("127.0.0.1", None, False), ("localhost", None, False)],
)  # fmt: skip
def test_serving_beyond_loopback_without_a_key_warns_loudly(
    cli_env: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    host: str,
    key: str | None,
    warned: bool,
) -> None:
    import uvicorn

    started: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(kw))
    if key:
        monkeypatch.setenv("MOA_SERVER_API_KEY", key)
    (tmp_path / "solo.yaml").write_text(SOLO)
    result = CliRunner().invoke(cli, ["serve", "-c", "solo.yaml", "--host", host])
    assert result.exit_code == 0, result.output
    assert ("WARNING" in result.stderr and "MOA_SERVER_API_KEY" in result.stderr) is warned
    assert started["host"] == host


def test_serve_passes_its_limits_to_uvicorn(
    cli_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    import uvicorn

    started: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(kw))
    (tmp_path / "solo.yaml").write_text(SOLO)
    flags = ["--max-body-size", "1000", "--max-connections", "7", "--keep-alive-timeout", "3",
             "--header-timeout", "2.5"]  # fmt: skip
    result = CliRunner().invoke(cli, ["serve", "-c", "solo.yaml", *flags])
    assert result.exit_code == 0, result.output
    assert started["limit_concurrency"] == 7 and started["timeout_keep_alive"] == 3
    assert started["http"].header_timeout == 2.5
    defaults = ServerLimits()
    assert (defaults.max_body_bytes, defaults.max_json_depth, defaults.max_int_digits) == (
        4 << 20,
        32,
        100,
    )
    bad = CliRunner().invoke(cli, ["serve", "-c", "solo.yaml", "--header-timeout", "inf"])
    assert bad.exit_code == 2


def test_readme_security_section_states_the_server_limits() -> None:
    from tests.conftest import ROOT

    section = (ROOT / "README.md").read_text().split("\n## Security\n", 1)[1].split("\n## ")[0]
    d = ServerLimits()
    rows = {
        "request body | `--max-body-size`": f"{d.max_body_bytes} bytes",
        "JSON nesting | `--max-json-depth`": f"{d.max_json_depth}",
        "digits in a JSON integer |": f"{d.max_int_digits}",
        "request line and headers | `--header-timeout`": f"{d.header_timeout:g} s",
        "whole body | `--body-timeout`": f"{d.body_timeout:g} s",
        "idle keep-alive connection | `--keep-alive-timeout`": f"{d.keep_alive_timeout} s",
        "connections and requests at once | `--max-connections`": f"{d.max_connections}",
    }
    for limit, default in rows.items():
        assert f"| {limit} | {default}" in section, limit
    defaults = {p.name: p.default for p in cli.commands["serve"].params}
    assert defaults["max_body_size"] == d.max_body_bytes
    assert defaults["max_json_depth"] == d.max_json_depth
    assert defaults["header_timeout"] == d.header_timeout
    assert defaults["body_timeout"] == d.body_timeout
    assert defaults["keep_alive_timeout"] == d.keep_alive_timeout
    assert defaults["max_connections"] == d.max_connections
