"""No API key leaks, whatever an upstream echoes.

The fake provider's `echo_*` faults quote the key the request carried in every body shape: a
2xx body that is not JSON, an SSE event that is not JSON, a JSON error body, an answer cut off
inside the event quoting it, a normal answer quoting it (streamed in pieces that split the
key). Most rows repeat the key a hundred times, so wherever moa cuts a long text, the cut falls
inside a key: no prefix of a key may survive a cut. Each row runs on both call paths (moa's
direct HTTP fast path, and litellm with MOA_FAST_PATH=0), and every output channel is
searched: exception str/repr, traceback text and the locals of moa's frames, the result,
stream events, `moa run --trace` / `--json`, `moa batch` output lines, `moa serve` error
bodies (plain and streamed), and log records.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import CANARY_KEY, moa_frame_locals
from pydantic import SecretStr

from moa import MixtureOfAgents, NeuronError, Settings, create_moa_from_config
from moa.cli import cli
from moa.neurons.base import NeuronRequest
from moa.neurons.llm import LLMConfig, LLMNeuron
from moa.testing import FakeProvider, RecordedRequest, Reply

MANY = 100  # keys in a row: a cut at any offset up to ~2,600 characters splits one
SHAPES: dict[str, Reply] = {
    "2xx body not JSON": Reply(fault="echo_text", echo_times=MANY),
    "2xx body not JSON, short": Reply(fault="echo_text", echo_pad=7),
    "SSE event not JSON": Reply(fault="echo_sse", echo_times=MANY),
    "JSON error 500": Reply(fault="echo_error", status=500, echo_times=MANY),
    "JSON error 401": Reply(fault="echo_error", status=401, echo_pad=11, echo_times=MANY),
    "JSON error 400, short": Reply(fault="echo_error", status=400),
    "answer cut inside the key": Reply(fault="echo_partial", echo_times=MANY),
    "answer quoting the key": Reply(fault="echo_content", echo_pad=1),
}
OTHER_KEY = "sk-other-team-0c4d2b9e11"  # another neuron's key, echoed by a proxy in between
SERVER_KEY = "moa-srv-key-8e2f6a0d93"
CONFIG = """
proposal_layers:
  - neurons:
    - {model: "m/OK"}
    - {model: "m/BAD"}
aggregation_layer:
  model: "m/AGG"
retry: {max_retries: 0}
"""


@pytest.fixture(params=["fast", "litellm"])
def path_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MOA_FAST_PATH", "1" if request.param == "fast" else "0")
    return str(request.param)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog


def assert_no_key(texts: list[str], *keys: str) -> None:
    """No key, and no start of one (a cut that kept a prefix), in any of `texts`."""
    for key in (CANARY_KEY, *keys):
        for text in texts:
            assert key[:4] not in text, text[max(0, text.find(key[:4]) - 300) :][:600]


def error_texts(error: BaseException) -> list[str]:
    """Everything an error shows: message, repr, traceback, the locals of moa's frames."""
    return [
        str(error),
        repr(error),
        "".join(traceback.format_exception(error)),
        moa_frame_locals(error),
        *(repr(e) for e in getattr(error, "exceptions", ())),
    ]


def echo_bad_and_aggregator(fake: FakeProvider, shape: Reply) -> None:
    def answer(request: RecordedRequest) -> Reply:
        return shape if request.model in {"m/BAD", "m/AGG"} else Reply()

    fake.respond_with(None, answer)


def neuron(fake: FakeProvider) -> LLMNeuron:
    settings = Settings(provider_api_key=SecretStr(CANARY_KEY), base_url=fake.base_url)
    return LLMNeuron.create(LLMConfig(model="m/BAD"), settings=settings, path="p")


REQUEST = NeuronRequest(messages=({"role": "user", "content": "hi"},))


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_a_neuron_call_quotes_no_key(
    shape: str, path_mode: str, fake: FakeProvider, logs: pytest.LogCaptureFixture
) -> None:
    """`generate` and `stream` of the llm neuron itself: errors, results, deltas."""
    fake.set_default(SHAPES[shape])
    texts: list[str] = []
    llm = neuron(fake)
    try:
        texts.append(repr(await llm.generate(REQUEST)))
    except NeuronError as error:
        texts += error_texts(error)
    deltas: list[str] = []
    try:
        async for piece in llm.stream(REQUEST):
            deltas.append(piece if isinstance(piece, str) else repr(piece))
    except NeuronError as error:
        texts += error_texts(error)
    streamed = "".join(d for d in deltas if not d.startswith("Generation("))
    texts += [*deltas, streamed, logs.text]
    assert len(fake.requests) == 2
    assert_no_key(texts)
    if shape == "answer quoting the key":  # the answer itself survives, the key is masked
        assert streamed == "Your key is x***, keep it safe."
        assert "Generation(text='Your key is x***, keep it safe.'" in texts[0]


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_a_mixture_quotes_no_key(
    shape: str, path_mode: str, fake: FakeProvider, build: Any, logs: pytest.LogCaptureFixture
) -> None:
    """`process()` (result or error, with the trace of the failed proposal) and `stream()`
    (events, the aggregator streaming the echo)."""
    echo_bad_and_aggregator(fake, SHAPES[shape])
    mixture: MixtureOfAgents = build(CONFIG)
    texts: list[str] = []
    try:
        result = await mixture.process("hi")
        texts += [result.model_dump_json(), repr(result), result.content]
    except Exception as error:
        texts += error_texts(error)
    try:
        async for event in mixture.stream("hi"):
            texts.append(repr(event))
    except Exception as error:
        texts += error_texts(error)
    texts.append(logs.text)
    assert_no_key(texts)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_command_line_quotes_no_key(
    shape: str,
    path_mode: str,
    fake: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    logs: pytest.LogCaptureFixture,
) -> None:
    """`moa run --trace` (streamed), `moa run --json --trace`, `moa batch` output lines."""
    monkeypatch.setenv("BASE_URL", fake.base_url)
    monkeypatch.setenv("PROVIDER_API_KEY", CANARY_KEY)
    config = tmp_path / "moa.yaml"
    config.write_text(CONFIG)
    echo_bad_and_aggregator(fake, SHAPES[shape])
    texts: list[str] = []
    for args in (
        ["run", "hi", "-c", str(config), "--trace"],
        ["run", "hi", "-c", str(config), "--json", "--trace"],
        ["batch", "in.jsonl", "-o", "out.jsonl", "-c", str(config), "--no-progress"],
    ):
        Path("in.jsonl").write_text('"first"\n"second"\n')
        ran = CliRunner().invoke(cli, args)
        texts += [ran.stdout, ran.stderr]
        if ran.exception is not None and not isinstance(ran.exception, SystemExit):
            texts += error_texts(ran.exception)
    lines = Path("out.jsonl").read_text().splitlines()
    assert len(lines) == 2
    texts += [*lines, logs.text]
    assert_no_key(texts)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_server_quotes_no_key(
    shape: str, path_mode: str, fake: FakeProvider, build: Any, logs: pytest.LogCaptureFixture
) -> None:
    """`moa serve`: the body of a failed request and the events of a failed stream, as
    an untrusted API client sees them."""
    from starlette.testclient import TestClient

    from moa.adapters.server import create_app

    echo_bad_and_aggregator(fake, SHAPES[shape])
    app = create_app({"mix": build(CONFIG)}, api_key=SERVER_KEY)
    headers = {"Authorization": f"Bearer {SERVER_KEY}"}
    body: dict[str, Any] = {"model": "mix", "messages": [{"role": "user", "content": "hi"}]}
    texts: list[str] = []
    with TestClient(app, raise_server_exceptions=False) as http:
        for stream in (False, True):
            answer = http.post(
                "/v1/chat/completions", json={**body, "stream": stream}, headers=headers
            )
            texts += [answer.text, json.dumps(dict(answer.headers))]
    texts.append(logs.text)
    assert_no_key(texts, SERVER_KEY)


async def test_every_configured_secret_is_masked_not_only_the_callers(
    path_mode: str,
    fake: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
    logs: pytest.LogCaptureFixture,
) -> None:
    """A proxy in front of several accounts echoes keys the failing neuron never sent: another
    neuron's `api_key_env` key and the server's key are masked as well as its own."""
    from moa.adapters.server import create_app

    monkeypatch.setenv("TEAM_KEY", OTHER_KEY)
    monkeypatch.setenv("MOA_SERVER_API_KEY", SERVER_KEY)
    echoed = f"keys seen: {OTHER_KEY}, {SERVER_KEY}, {CANARY_KEY}; end"
    fake.script("m/BAD", Reply(status=500, error_message=echoed))
    fake.script("m/AGG", Reply(content=f"summary quoting {OTHER_KEY} and {SERVER_KEY}"))
    config = {
        "proposal_layers": [
            {"neurons": [{"model": "m/OK", "api_key_env": "TEAM_KEY"}, {"model": "m/BAD"}]}
        ],
        "aggregation_layer": {"model": "m/AGG"},
        "retry": {"max_retries": 0},
    }
    settings = Settings(provider_api_key=SecretStr(CANARY_KEY), base_url=fake.base_url)
    mixture = create_moa_from_config(config, is_file_path=False, settings=settings)
    create_app({"mix": mixture}, api_key=SERVER_KEY, prepare=False)
    result = await mixture.process("hi")
    bad = result.layers[0].neurons[1]
    assert bad.error is not None and "keys seen: ***, ***, ***; end" in bad.error
    assert result.content == "summary quoting *** and ***"
    assert_no_key([result.model_dump_json(), repr(result), logs.text], OTHER_KEY, SERVER_KEY)


def test_a_key_cut_anywhere_leaves_nothing_and_pieces_are_masked_whole() -> None:
    from moa._redact import StreamRedactor, clip

    text = f"error: {CANARY_KEY} {CANARY_KEY}"
    for limit in range(1, len(text) + 2):  # every cut, through both keys
        assert CANARY_KEY[:2] not in clip(text, limit, [CANARY_KEY])
    for size in range(1, len(CANARY_KEY) + 2):  # the answer in pieces of every size
        redactor = StreamRedactor([CANARY_KEY])
        answer = f"a {CANARY_KEY} b {CANARY_KEY[:6]}"  # a key, then only the start of one
        shown = [redactor.feed(answer[i : i + size]) for i in range(0, len(answer), size)]
        assert all(CANARY_KEY[:7] not in piece for piece in shown)
        assert "".join(shown) + redactor.flush() == f"a *** b {CANARY_KEY[:6]}"
