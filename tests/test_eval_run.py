"""`moa eval` end to end against the loopback fake provider: the systems it compares, the
JSON it prints, the call cache (zero upstream calls on a rerun) and resuming a killed run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from moa.cli import cli
from moa.testing import FakeProvider, RecordedRequest, Reply
from tests.conftest import CANARY_KEY

MIXTURE = """
proposal_layers:
  - neurons:
    - {model: "m/good", prompt: "Solve it."}
    - {model: "m/bad", prompt: "Solve it."}
aggregation_layer:
  model: "m/agg"
"""


def _sum(request: RecordedRequest, off_by: int = 0) -> str:
    found = re.findall(r"what is (\d+)\+(\d+)", request.last_user or "")
    if not found:
        return "I do not know"
    a, b = map(int, found[-1])
    return f"Let me think. Answer: {a + b + off_by}"


@pytest.fixture
def setup(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Data, a mixture of a right and a wrong model, and the environment pointing at the
    fake provider with a cache of this test's own."""
    monkeypatch.setenv("BASE_URL", fake.base_url)
    monkeypatch.setenv("PROVIDER_API_KEY", CANARY_KEY)
    monkeypatch.setenv("MOA_MAX_RETRIES", "0")
    monkeypatch.setenv("MOA_EVAL_CACHE", str(tmp_path / "cache"))
    fake.respond_with("m/good", _sum)
    fake.respond_with("m/bad", lambda r: _sum(r, 1))
    fake.respond_with("m/agg", _sum)
    items = [{"id": f"q{i}", "query": f"what is {i}+{i}?", "answer": 2 * i} for i in range(8)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (tmp_path / "mix.yaml").write_text(MIXTURE)
    return tmp_path


def run_eval(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(
        cli,
        ["eval", "data.jsonl", "-c", "mix.yaml", "--scorer", "number", "--json",
         "--no-progress", *args],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def test_systems_and_the_json_shape(setup: Path, fake: FakeProvider) -> None:
    summary = run_eval()
    systems = {s["name"]: s for s in summary["systems"]}
    assert [(s["name"], s["kind"]) for s in summary["systems"]] == [
        ("m/good", "single"),
        ("m/bad", "single"),
        ("mixture", "mixture"),
        ("self-moa(m/good x2)", "self_moa"),
        ("vote(m/good x2)", "vote"),
        ("oracle(m/good x2)", "oracle"),
    ]
    for system in summary["systems"]:
        assert {"name", "kind", "n", "correct", "score", "ci95", "usage", "cost",
                "seconds_p50", "seconds_p95"} <= set(system)  # fmt: skip
        assert system["n"] == 8
    assert systems["m/good"]["correct"] == 8
    assert systems["m/bad"]["correct"] == 0
    assert systems["mixture"]["score"] == 1.0
    assert systems["m/bad"]["ci95"] == [0.0, pytest.approx(0.3244, abs=1e-4)]  # Wilson 0/8
    assert summary["baseline"] == "m/good"
    comparisons = {c["system"]: c for c in summary["comparisons"]}
    assert set(comparisons) == set(systems) - {"m/good"}
    for comparison in summary["comparisons"]:
        assert {"system", "baseline", "diff", "ci95", "p_value"} <= set(comparison)
        assert comparison["baseline"] == "m/good"
    assert comparisons["m/bad"]["diff"] == -1.0
    assert comparisons["m/bad"]["p_value"] == pytest.approx(2 / 256)
    assert "worse" in comparisons["m/bad"]["note"]
    assert "includes 0" in comparisons["mixture"]["note"]
    # A single is asked exactly what the mixture's first layer asks: same system prompt.
    assert all(r.system == "Solve it." for r in fake.requests_for("m/good"))


def test_singles_reuse_the_mixtures_calls_and_vote_reuses_self_moas_samples(
    setup: Path, fake: FakeProvider
) -> None:
    run_eval()
    # m/good: 8 single calls (= the mixture's first-layer calls, = sample 0), 8 second samples,
    # 8 self-moa aggregations; m/bad: 8; m/agg: 8. The vote system makes no call at all.
    assert len(fake.requests_for("m/good")) == 24
    assert len(fake.requests_for("m/bad")) == 8
    assert len(fake.requests_for("m/agg")) == 8


def test_a_rerun_makes_zero_upstream_calls(setup: Path, fake: FakeProvider) -> None:
    first = run_eval()
    made = len(fake.requests)
    # Even with the run files gone, every answer comes from the call cache.
    for path in (setup / "cache" / "runs").iterdir():
        path.unlink()
    second = run_eval()
    assert len(fake.requests) == made
    assert first["cache"]["misses"] == made
    assert second["cache"] == {"hits": first["cache"]["hits"] + made, "misses": 0}
    # Cached calls keep the time they took when made (the vote aggregator, which calls no
    # model and is not cached, adds its microseconds again).
    for a, b in zip(first["systems"], second["systems"], strict=True):
        timing = {"seconds_p50", "seconds_p95", "compute_seconds"}
        assert {k: v for k, v in a.items() if k not in timing} == {
            k: v for k, v in b.items() if k not in timing
        }
        for key in timing:
            assert a[key] == pytest.approx(b[key], abs=0.1)


def test_no_cache_calls_again_and_keeps_nothing(setup: Path, fake: FakeProvider) -> None:
    run_eval("--no-cache")
    made = len(fake.requests)
    run_eval("--no-cache")
    assert len(fake.requests) == 2 * made
    assert not (setup / "cache").exists()


def test_baselines_can_be_chosen(setup: Path) -> None:
    summary = run_eval("--baselines", "vote", "--samples", "3")
    kinds = [s["kind"] for s in summary["systems"]]
    assert kinds == ["single", "mixture", "vote"]  # only the best single is kept, as baseline
    assert summary["systems"][2]["name"] == "vote(m/good x3)"


def test_other_configs_and_presets(setup: Path) -> None:
    (setup / "other.yaml").write_text(MIXTURE.replace("m/bad", "m/good"))
    summary = run_eval("-c", "other.yaml", "--baselines", "")
    assert [(s["name"], s["kind"]) for s in summary["systems"]] == [
        ("mixture", "mixture"),
        ("other", "config"),
    ]
    result = CliRunner().invoke(
        cli,
        ["eval", "data.jsonl", "--preset", "vote", "--model", "m/good", "--samples", "3",
         "--scorer", "number", "--json", "--no-progress", "--baselines", ""],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (mixture,) = json.loads(result.stdout)["systems"]
    assert mixture["correct"] == 8


def test_items_file_and_escaped_html_report(setup: Path, fake: FakeProvider) -> None:
    hostile = "<script>alert('x')</script>"
    data = setup / "data.jsonl"
    data.write_text(
        data.read_text() + json.dumps({"id": "h", "query": hostile, "answer": 1}) + "\n"
    )
    fake.respond_with("m/bad", lambda r: "<img src=x onerror=alert(1)> Answer: 1")
    run_eval("-o", "items.jsonl", "--report", "eval.html")
    records = [json.loads(line) for line in (setup / "items.jsonl").read_text().splitlines()]
    assert len(records) == 9 * 6
    first = records[0]
    assert {"id", "system", "answer", "extracted", "score", "cost"} <= set(first)
    page = (setup / "eval.html").read_text()
    assert hostile not in page and "<img src=x" not in page
    assert "&lt;script&gt;" in page
    assert "<svg" in page and "Pareto" in page
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing fetched


def test_bad_input_is_a_clear_usage_error(setup: Path) -> None:
    (setup / "bad.jsonl").write_text('{"id": 1, "query": "a"}\n{"id": 1, "query": "b"}\n')
    result = CliRunner().invoke(cli, ["eval", "bad.jsonl", "-c", "mix.yaml"])
    assert result.exit_code == 2
    assert "id 1 is used twice" in result.output
    result = CliRunner().invoke(cli, ["eval", "data.jsonl"])
    assert result.exit_code == 2
    assert "give the mixture" in result.output
    result = CliRunner().invoke(cli, ["eval", "--dataset", "nope", "-c", "mix.yaml"])
    assert result.exit_code == 2
    assert "unknown dataset 'nope'" in result.output and "gsm8k" in result.output


def test_a_killed_eval_resumes_without_calling_anything_twice(
    setup: Path, fake: FakeProvider
) -> None:
    fake.set_default(Reply(latency=0.05))
    for model, off in (("m/good", 0), ("m/bad", 1), ("m/agg", 0)):
        fake.respond_with(model, lambda r, off=off: Reply(content=_sum(r, off), latency=0.05))
    command = [sys.executable, "-m", "moa", "eval", "data.jsonl", "-c", "mix.yaml",
               "--scorer", "number", "--json", "--no-progress", "--concurrency", "1"]  # fmt: skip
    env = dict(os.environ)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # a busy machine starts Python slowly
    while len(fake.requests) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = len(fake.requests)
    assert 20 <= killed < 40  # the run really was cut short (40 calls in all)
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert {s["name"]: s["correct"] for s in summary["systems"]}["mixture"] == 8
    # Every call is made once over both runs: 40 calls, as an uninterrupted run makes (at
    # most the one call in flight at the kill is asked again).
    assert 40 <= len(fake.requests) <= 40 + 1


@pytest.mark.parametrize("suffix", [".csv", ".json", ".parquet"])
def test_csv_json_and_parquet_data_score_like_json_lines(setup: Path, suffix: str) -> None:
    """README: "Each item is a line of JSON Lines (or a row of CSV / Parquet)"; a .json file
    holds a list. The same items in each format give the same scores."""
    records = [json.loads(line) for line in (setup / "data.jsonl").read_text().splitlines()]
    path = setup / f"data{suffix}"
    if suffix == ".csv":
        lines = ["id,query,answer"] + [f"{r['id']},{r['query']},{r['answer']}" for r in records]
        path.write_text("\n".join(lines) + "\n")
    elif suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        import pyarrow  # the dev extra installs it, as the ray extra does for users
        import pyarrow.parquet as pq

        pq.write_table(pyarrow.Table.from_pylist(records), path)
    result = CliRunner().invoke(
        cli,
        ["eval", path.name, "-c", "mix.yaml", "--scorer", "number", "--json", "--no-progress",
         "--baselines", "singles"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    systems = {s["name"]: s for s in json.loads(result.stdout)["systems"]}
    assert (systems["m/good"]["correct"], systems["m/bad"]["correct"]) == (8, 0)
    assert systems["mixture"]["n"] == 8 and systems["mixture"]["score"] == 1.0


def test_a_hugging_face_dataset_is_read_through_datasets(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: `hf:NAME[:CONFIG][@SPLIT]` reads a Hugging Face dataset with `datasets`
    installed, its `question` column as the query. NAME here is a dataset folder on disk
    (which `datasets.load_dataset` takes like a Hub name), read offline."""
    monkeypatch.setenv("HF_HOME", str(setup / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = setup / "sums"
    folder.mkdir()
    rows = [{"question": f"what is {i}+{i}?", "answer": 2 * i} for i in range(8)]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(
        cli,
        ["eval", f"hf:{folder}@test", "-c", "mix.yaml", "--scorer", "number", "--json",
         "--no-progress", "--baselines", "singles"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    systems = {s["name"]: s for s in json.loads(result.stdout)["systems"]}
    assert (systems["m/good"]["correct"], systems["m/bad"]["correct"]) == (8, 0)
    missing = CliRunner().invoke(cli, ["eval", f"hf:{setup / 'nope'}", "-c", "mix.yaml"])
    assert missing.exit_code == 2 and "cannot load Hugging Face dataset" in missing.output
