"""`moa batch`: one result line per query, errors recorded, resumable, whole lines only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from moa.cli import cli
from moa.testing import FakeProvider, RecordedRequest, Reply
from tests.conftest import CANARY_KEY, ROOT, kill_after_lines

CONFIG = """
proposal_layers:
  - neurons:
    - {model: "meta-llama/A"}
aggregation_layer:
  model: "meta-llama/AGG"
"""


@pytest.fixture
def env(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    values = {
        "BASE_URL": fake.base_url,
        "PROVIDER_API_KEY": CANARY_KEY,
        "MOA_MAX_RETRIES": "0",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "moa.yaml").write_text(CONFIG)
    return values


def echo_query(request: RecordedRequest) -> Reply | str:
    """Each call answers with the user's query, so results can be matched to their input."""
    text = request.last_user or ""
    if "FAIL" in text:
        return Reply(status=500, error_message="scripted failure")
    return f"re: {text}"


def write_lines(path: Path, lines: list[Any]) -> None:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def batch(*extra: str) -> Result:
    args = ["batch", "in.jsonl", "-o", "out.jsonl", "-c", "moa.yaml", "--no-fsync", *extra]
    return CliRunner().invoke(cli, args)


def test_every_input_form_gives_one_line(fake: FakeProvider, env: dict[str, str]) -> None:
    fake.respond_with("meta-llama/A", echo_query)
    write_lines(
        Path("in.jsonl"),
        [
            json.dumps("plain string"),
            "",
            {"id": "q-2", "query": "with an id"},
            {"query": "no id"},
            {"id": 7, "query": ["turn one", "turn two"]},
            {"id": 8, "messages": [{"role": "user", "content": "as messages"}]},
        ],
    )
    result = batch()
    assert result.exit_code == 0, result.output
    by_id = {r["id"]: r for r in records(Path("out.jsonl"))}
    assert set(by_id) == {1, "q-2", 4, 7, 8}  # lines without an id are named by line number
    assert by_id[1]["content"] == "answer from meta-llama/AGG"
    assert by_id[1]["result"]["layers"][0]["neurons"][0]["text"] == "re: plain string"
    assert by_id[7]["result"]["query"] == "turn two"
    assert by_id[8]["result"]["layers"][0]["neurons"][0]["text"] == "re: as messages"
    assert by_id["q-2"]["error"] is None and by_id["q-2"]["usage"]["prompt_tokens"] > 0
    assert "batch: 5 run" in result.stderr


def test_failures_are_recorded_and_the_run_goes_on(fake: FakeProvider, env: dict[str, str]) -> None:
    fake.respond_with("meta-llama/A", echo_query)
    write_lines(
        Path("in.jsonl"),
        [
            {"id": "ok", "query": "fine"},
            {"id": "boom", "query": "please FAIL"},
            "{not json",
            {"id": "bad", "query": 42},
            {"id": "none"},
        ],
    )
    result = batch()
    assert result.exit_code == 1  # some queries failed
    by_id = {r["id"]: r for r in records(Path("out.jsonl"))}
    assert by_id["ok"]["error"] is None
    assert by_id["boom"]["error_type"] == "AllNeuronsFailed"
    assert "scripted failure" in by_id["boom"]["error"]
    assert by_id[3]["error_type"] == "BatchInputError" and "not JSON" in by_id[3]["error"]
    assert by_id["bad"]["error_type"] == "QueryError"
    assert by_id["none"]["error_type"] == "BatchInputError"
    assert "(4 failed)" in result.stderr
    assert "Traceback" not in result.output


def test_rerun_skips_ids_already_written(fake: FakeProvider, env: dict[str, str]) -> None:
    write_lines(Path("in.jsonl"), [{"id": i, "query": f"q{i}"} for i in range(5)])
    assert batch("--concurrency", "2").exit_code == 0
    calls = len(fake.requests)
    again = batch()
    assert again.exit_code == 0
    assert "batch: 0 run, 5 already in out.jsonl" in again.stderr
    assert len(fake.requests) == calls  # nothing was called again
    # new input lines are picked up
    write_lines(Path("in.jsonl"), [{"id": i, "query": f"q{i}"} for i in range(7)])
    assert batch().exit_code == 0
    assert sorted(r["id"] for r in records(Path("out.jsonl"))) == list(range(7))


def test_a_half_line_left_by_another_tool_is_tolerated(
    fake: FakeProvider, env: dict[str, str]
) -> None:
    write_lines(Path("in.jsonl"), [{"id": i, "query": f"q{i}"} for i in range(3)])
    done = json.dumps({"id": 0, "content": "earlier"})
    Path("out.jsonl").write_text(done + "\n" + "garbage line\n" + '{"id": 1, "content": "hal')
    result = batch()
    assert result.exit_code == 0, result.output
    lines = Path("out.jsonl").read_text().splitlines()
    assert lines[:2] == [done, "garbage line"]
    ids = [json.loads(line)["id"] for line in lines if line.startswith("{")]
    assert sorted(ids) == [0, 1, 2]  # 1 was only half written, so it is run again
    assert "1 unreadable line(s)" in result.stderr


def test_a_whole_last_line_without_newline_is_kept(fake: FakeProvider, env: dict[str, str]) -> None:
    write_lines(Path("in.jsonl"), [{"id": i, "query": f"q{i}"} for i in range(2)])
    Path("out.jsonl").write_text(json.dumps({"id": 0, "content": "earlier"}))
    assert batch().exit_code == 0
    assert [r["id"] for r in records(Path("out.jsonl"))] == [0, 1]


def test_duplicate_ids_are_a_usage_error(env: dict[str, str]) -> None:
    write_lines(Path("in.jsonl"), [{"id": "a", "query": "x"}, {"id": "a", "query": "y"}])
    result = batch()
    assert result.exit_code == 2
    assert "id 'a' is already used on line 1" in result.stderr
    missing = CliRunner().invoke(cli, ["batch", "nope.jsonl", "-o", "o.jsonl", "-c", "moa.yaml"])
    assert missing.exit_code == 2 and "cannot read nope.jsonl" in missing.stderr


def test_killed_run_resumes_with_every_id_exactly_once(
    fake: FakeProvider, env: dict[str, str]
) -> None:
    """SIGKILL a real `moa batch` process mid-run: whole lines only, and a rerun completes."""
    total = 40
    write_lines(Path("in.jsonl"), [{"id": f"id-{i}", "query": f"q{i}"} for i in range(total)])
    fake.set_default(Reply(latency=0.05))
    child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    command = ["batch", "in.jsonl", "-o", "out.jsonl", "-c", "moa.yaml", "--concurrency", "2"]
    out = Path("out.jsonl")
    kill_after_lines([*command, "--no-progress"], child_env, out, 4)
    data = out.read_bytes()
    assert data.endswith(b"\n")  # no half line
    first = records(out)
    assert 4 <= len(first) < total  # killed mid-run
    fake.set_default(Reply())
    result = batch("--concurrency", "8")
    assert result.exit_code == 0, result.output
    ids = [r["id"] for r in records(out)]
    assert sorted(ids) == sorted(f"id-{i}" for i in range(total))  # each exactly once
    assert f"{len(first)} already in out.jsonl" in result.stderr


def test_an_unusable_output_is_a_usage_error(env: dict[str, str]) -> None:
    write_lines(Path("in.jsonl"), [json.dumps("q")])
    Path("out.jsonl").mkdir()
    result = batch()
    assert result.exit_code == 2
    assert "is a directory" in result.stderr and "Traceback" not in result.output
