"""One bad string never stops everything: a lone surrogate in a batch query or in an upstream
answer, rich markup in provider text, an output that cannot be written."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from moa import MixtureOfAgents, Settings
from moa.adapters.server import create_app
from moa.cli import cli
from moa.testing import FakeProvider, RecordedRequest, Reply
from tests.conftest import CANARY_KEY, ROOT
from tests.test_server import ServerThread

SURROGATE = "\ud83d"  # half of an emoji: not encodable as UTF-8
CONFIG = """
proposal_layers:
  - neurons:
    - {model: "meta-llama/A"}
aggregation_layer:
  model: "meta-llama/AGG"
"""


@pytest.fixture
def env(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    values = {"BASE_URL": fake.base_url, "PROVIDER_API_KEY": CANARY_KEY, "MOA_MAX_RETRIES": "0"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "moa.yaml").write_text(CONFIG)
    return values


def echo(request: RecordedRequest) -> str:
    return f"re: {request.last_user}"


def strict_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON Lines file, failing unless the file is strict UTF-8."""
    return [json.loads(line) for line in path.read_bytes().decode("utf-8").splitlines()]


def test_a_lone_surrogate_in_one_query_fails_that_line_only(
    fake: FakeProvider, env: dict[str, str]
) -> None:
    fake.respond_with("meta-llama/A", echo)
    lines = [
        json.dumps({"id": "a", "query": "first"}),
        '{"id": "bad", "query": "half an emoji \\ud83d here"}',
        '{"id": "bad-id-\\udc00", "query": "the id is broken"}',
        json.dumps({"id": "b", "query": "second"}),
    ]
    Path("in.jsonl").write_text("\n".join(lines) + "\n")
    args = ["batch", "in.jsonl", "-o", "out.jsonl", "-c", "moa.yaml", "--no-fsync"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 1, first.output  # some lines failed; the run went on
    records = {r["id"]: r for r in strict_lines(Path("out.jsonl"))}
    assert records["a"]["content"] and records["b"]["content"]
    assert records["bad"]["error_type"] == "QueryError"
    assert "surrogate" in records["bad"]["error"]
    assert records[3]["error_type"] == "BatchInputError"  # the line number stands in for the id
    again = CliRunner().invoke(cli, args)  # resume: nothing left to do, nothing aborts
    assert again.exit_code == 0, again.output
    assert "4 already in out.jsonl" in again.stderr
    assert len(strict_lines(Path("out.jsonl"))) == 4


def test_a_line_that_is_not_utf8_fails_that_line_only(
    fake: FakeProvider, env: dict[str, str]
) -> None:
    fake.respond_with("meta-llama/A", echo)
    Path("in.jsonl").write_bytes(b'"first"\n"caf\xe9 in latin-1"\n"third"\n')
    args = ["batch", "in.jsonl", "-o", "out.jsonl", "-c", "moa.yaml", "--no-fsync"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, (result.output, result.exception)
    records = {r["id"]: r for r in strict_lines(Path("out.jsonl"))}
    assert records[1]["content"] and records[3]["content"]
    assert records[2]["error"] == "line 2 is not UTF-8 text"


def test_a_lone_surrogate_from_upstream_is_valid_utf8_in_batch_output(
    fake: FakeProvider, env: dict[str, str]
) -> None:
    fake.set_default(Reply(f"broken {SURROGATE} answer"))
    Path("in.jsonl").write_text(json.dumps("q") + "\n")
    result = CliRunner().invoke(
        cli, ["batch", "in.jsonl", "-o", "out.jsonl", "-c", "moa.yaml", "--no-fsync"]
    )
    assert result.exit_code == 0, result.output
    (record,) = strict_lines(Path("out.jsonl"))
    assert record["content"] == "broken \ufffd answer"


def test_moa_run_json_and_plain_with_a_surrogate_answer(
    fake: FakeProvider, env: dict[str, str]
) -> None:
    fake.set_default(Reply(f"broken {SURROGATE} answer"))
    as_json = CliRunner().invoke(cli, ["run", "q", "-c", "moa.yaml", "--json"])
    assert as_json.exit_code == 0, (as_json.output, as_json.exception)
    assert json.loads(as_json.stdout)["content"] == "broken \ufffd answer"
    for extra in ([], ["--no-stream"]):  # a real stdout, strict UTF-8
        done = subprocess.run(
            [sys.executable, "-m", "moa", "run", "q", "-c", "moa.yaml", *extra],
            env={**os.environ, **env, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"},
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        assert done.stdout.decode("utf-8") == "broken \ufffd answer\n"


def test_run_trace_never_reads_provider_text_as_markup(
    fake: FakeProvider, env: dict[str, str]
) -> None:
    second = '- {model: "meta-llama/A"}\n    - {model: "x/[b]B[/b]"}'
    Path("two.yaml").write_text(CONFIG.replace('- {model: "meta-llama/A"}', second))
    fake.script("meta-llama/A", Reply(status=500, error_message="closing [/] and [bold]open"))
    result = CliRunner().invoke(cli, ["run", "q", "-c", "two.yaml", "--trace"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "closing [/] and" in result.stderr and "[bold]open" in result.stderr  # may wrap
    assert "x/[b]B[/b]" in result.stderr


@pytest.fixture(scope="module")
def surrogate_server(_moa_fake_provider_server: FakeProvider) -> Iterator[ServerThread]:
    settings = Settings(
        provider_api_key=SecretStr(CANARY_KEY),
        base_url=_moa_fake_provider_server.base_url,
        max_retries=0,
    )
    mixtures = {"solo": MixtureOfAgents.from_config(CONFIG, is_file_path=False, settings=settings)}
    with ServerThread(create_app(mixtures)) as running:
        yield running


def test_moa_serve_with_a_surrogate_answer(
    surrogate_server: ServerThread, fake: FakeProvider
) -> None:
    fake.set_default(Reply(f"broken {SURROGATE} answer"))
    url = f"{surrogate_server.url}/v1/chat/completions"
    body: dict[str, Any] = {"model": "solo", "messages": [{"role": "user", "content": "q"}]}
    plain = httpx.post(url, json=body, timeout=60)
    assert plain.status_code == 200, plain.text
    answer = json.loads(plain.content.decode("utf-8"))
    assert answer["choices"][0]["message"]["content"] == "broken \ufffd answer"
    streamed = httpx.post(url, json={**body, "stream": True}, timeout=60)
    assert streamed.status_code == 200
    events = [e.removeprefix("data: ") for e in streamed.content.decode("utf-8").split("\n\n") if e]
    assert events[-1] == "[DONE]", events
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "broken \ufffd answer"


def test_moa_serve_rejects_a_surrogate_in_the_request(
    surrogate_server: ServerThread, fake: FakeProvider
) -> None:
    raw = b'{"model": "solo", "messages": [{"role": "user", "content": "x \\ud83d"}]}'
    response = httpx.post(
        f"{surrogate_server.url}/v1/chat/completions",
        content=raw,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400
    assert "surrogate" in response.json()["error"]["message"]
    assert not fake.requests


def test_batch_to_an_unwritable_output_stops_at_the_first_error(
    fake: FakeProvider, env: dict[str, str]
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    Path("in.jsonl").write_text("".join(json.dumps(f"q{i}") + "\n" for i in range(50)))

    def limit() -> None:  # an unbounded read fails the test, not the machine
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    done = subprocess.run(
        [sys.executable, "-m", "moa", "batch", "in.jsonl", "-o", "/dev/full", "-c", "moa.yaml",
         "--no-progress", "--concurrency", "1"],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
        check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "cannot write /dev/full" in done.stderr
    assert "No space left on device" in done.stderr
    assert len(fake.requests_for("meta-llama/A")) == 1  # stopped at the first line
