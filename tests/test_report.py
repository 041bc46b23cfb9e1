"""Run and batch reports (moa.report): one self-contained HTML file, every model text escaped,
checked in a real headless Chromium (the DOM it renders, and a screenshot); `moa run
--report` and `moa batch --report`."""

from __future__ import annotations

import asyncio
import html.parser
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import CANARY_KEY, ROOT

from moa import AllNeuronsFailed, MixtureOfAgents, MoAResult
from moa.cli import cli
from moa.report import (
    render_batch_report,
    render_error_report,
    render_report,
    write_batch_report,
    write_report,
)
from moa.testing import FakeProvider, Reply

sys.path.insert(0, str(ROOT / "docs"))
from report_example import chromium, run_chromium

Build = Callable[..., MixtureOfAgents]

HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=\"document.body.dataset.pwned=1\"> & <b>bold</b>"
CONFIG: dict[str, Any] = {
    "retry": {"max_retries": 1, "backoff_base": 0, "backoff_max": 0},
    "proposal_layers": [
        {
            "neurons": [
                {"model": "m/A", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
                {"model": "m/B", "fallbacks": ["m/F"]},
                {"model": "m/C"},
            ]
        }
    ],
    "aggregation_layer": {"model": "m/AGG"},
}


class Dom(html.parser.HTMLParser):
    """Elements of an HTML document: (tag, attributes) in order, text by element id."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text_by_id: dict[str, str] = {}
        self._open: list[str | None] = []
        self.title = ""
        self._in_title = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes))
        self._in_title = tag == "title"
        if tag not in {"br", "img", "meta", "i", "input", "link"}:
            self._open.append(attributes.get("id"))

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False
        if tag not in {"br", "img", "meta", "i", "input", "link"} and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        for element_id in self._open:
            if element_id:
                self.text_by_id[element_id] = self.text_by_id.get(element_id, "") + data

    def having(self, tag: str | None = None, **attrs: str) -> list[dict[str, str]]:
        found = []
        for name, attributes in self.elements:
            if tag is not None and name != tag:
                continue
            if all(
                value in attributes.get("class", "").split()
                if key == "class_"
                else attributes.get(key.replace("_", "-")) == value
                for key, value in attrs.items()
            ):
                found.append(attributes)
        return found


def bars(dom: Dom) -> list[dict[str, str]]:
    return [a for _, a in dom.elements if "bar" in a.get("class", "").split()]


@pytest.fixture
async def result(fake: FakeProvider, build: Build) -> MoAResult:
    fake.script("m/A", Reply(status=503), Reply(content=HOSTILE))
    fake.script("m/B", Reply(status=401))
    fake.script("m/C", Reply(status=400))
    return await build(CONFIG).process("Is <this> & that escaped?")


async def test_every_call_is_a_bar_with_its_state_and_numbers(result: MoAResult) -> None:
    dom = Dom(render_report(result))
    found = bars(dom)
    assert [b["data-path"] for b in found] == [c.path for c in result.neurons]
    assert [b["data-state"] for b in found] == ["retried", "fallback", "failed", "ok"]
    for bar, call in zip(found, result.neurons, strict=True):
        assert float(bar["data-start"]) == pytest.approx(call.start, abs=1e-6)
        assert bar["data-input-tokens"] == (str(call.usage.prompt_tokens) if call.usage else "")
    assert dom.text_by_id["total-input-tokens"] == str(result.usage.prompt_tokens)
    assert dom.text_by_id["total-output-tokens"] == str(result.usage.completion_tokens)
    assert dom.text_by_id["total-calls"] == "4"
    assert dom.text_by_id["final-answer"] == result.content


async def test_model_text_is_escaped_and_the_page_needs_no_network(result: MoAResult) -> None:
    page = render_report(result)
    assert "<script>document.title" not in page and "<img src=x" not in page
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in page
    assert "Is &lt;this&gt; &amp; that escaped?" in page
    assert page.count("<script>") == 1  # ours, inline
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    assert CANARY_KEY not in page


async def test_a_failed_run_gets_a_report_of_what_ran(fake: FakeProvider, build: Build) -> None:
    for model in ("m/A", "m/B", "m/F", "m/C"):
        fake.script(model, Reply(status=400))
    with pytest.raises(AllNeuronsFailed) as caught:
        await build(CONFIG).process("q")
    dom = Dom(render_error_report(caught.value, "q"))
    assert [b["data-state"] for b in bars(dom)] == ["failed", "failed", "failed"]
    assert dom.text_by_id["error"].startswith("AllNeuronsFailed")


def test_batch_report_shows_distributions_failures_and_the_slowest(
    fake: FakeProvider, build: Build, tmp_path: Path
) -> None:
    from moa.adapters.batch import read_items, run_batch

    fake.respond_with(None, lambda request: Reply(latency=0.01 * len(request.last_user or "")))
    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(json.dumps({"id": f"q{i}", "query": "x" * i}) for i in range(1, 6))
        + "\n"
        + json.dumps({"id": "bad"})
        + "\n"
    )
    output = tmp_path / "out.jsonl"
    mixture = build(
        {
            "proposal_layers": [{"neurons": [{"model": "m/A"}]}],
            "aggregation_layer": {"model": "m/AGG"},
        }
    )
    asyncio.run(run_batch(mixture, read_items(source), output, sync=False))
    records = [json.loads(line) for line in output.read_text().splitlines()]
    dom = Dom(render_batch_report(records))
    assert dom.text_by_id["total-queries"] == "6" and dom.text_by_id["total-failed"] == "1"
    histogram = [int(a["data-count"]) for a in dom.having("div") if "data-count" in a]
    assert sum(histogram) == 6
    assert "BatchInputError" in dom.text_by_id["query-failures"]
    slowest = [a["data-id"] for a in dom.having("details", class_="slow")]
    assert slowest[0] == "q5" and len(slowest) == 6


# -- in a real browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> str:
    found = chromium()
    if found is None:
        pytest.skip(
            "chromium is not installed (Debian: apt-get install chromium); .ci/run installs it"
        )
    return found


async def test_the_report_renders_in_chromium_with_a_bar_per_call_and_no_injected_script(
    browser: str, result: MoAResult, tmp_path: Path
) -> None:
    page = write_report(result, tmp_path / "run.html")
    done = await asyncio.to_thread(run_chromium, "--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-3000:]
    dom = Dom(done.stdout)
    assert "js" in dom.having("html")[0].get("class", "").split()  # our inline script ran
    assert dom.title == "moa run"  # the answer's <script> did not
    assert "data-pwned" not in done.stdout
    assert not dom.having("img")  # no element made of model text
    assert "&lt;b&gt;bold&lt;/b&gt;" in done.stdout
    found = bars(dom)
    assert len(found) == len(result.neurons)
    assert [b["data-path"] for b in found] == [c.path for c in result.neurons]
    assert dom.text_by_id["total-input-tokens"] == str(result.usage.prompt_tokens)
    assert dom.text_by_id["total-cost"] == (
        f"${result.cost:.6f}" if result.cost is not None else "unknown"
    )
    answer = dom.text_by_id["call-1"]
    assert HOSTILE in answer  # shown as text, character for character
    # opened at #call-3 (as a click on the third bar does), that call's answer is shown
    jumped = await asyncio.to_thread(run_chromium, "--dump-dom", page.as_uri() + "#call-3")
    shown = Dom(jumped.stdout).having("details", id="call-3")[0]
    assert "open" in shown and "focus" in shown["class"].split()
    assert "focus" in Dom(jumped.stdout).having(id="bar-3")[0]["class"].split()


def test_the_docs_example_renders_and_its_screenshot_is_a_png(browser: str, tmp_path: Path) -> None:
    """docs/report_example.py makes README's screenshot: run it, check its DOM in Chromium."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "report_example.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    png = (tmp_path / "report-example.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    result = MoAResult.model_validate_json((tmp_path / "result.json").read_text())
    assert len(result.neurons) == 14  # annotator, 3 layers of 4, aggregator
    rendered = run_chromium("--dump-dom", (tmp_path / "report-example.html").as_uri())
    dom = Dom(rendered.stdout)
    found = bars(dom)
    assert [b["data-path"] for b in found] == [c.path for c in result.neurons]
    states = {b["data-state"] for b in found}
    assert states == {"ok", "retried", "fallback", "failed", "timed-out"}
    assert dom.text_by_id["total-output-tokens"] == str(result.usage.completion_tokens)
    size = (tmp_path / "report-example.html").stat().st_size
    assert 20_000 < size < 40_000, size  # README: "about 30 KB of HTML for that 14-call run"


def test_moa_run_and_batch_write_reports(
    fake: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASE_URL", fake.base_url)
    monkeypatch.setenv("PROVIDER_API_KEY", CANARY_KEY)
    config = tmp_path / "moa.yaml"
    config.write_text(
        json.dumps(
            {
                "proposal_layers": [{"neurons": [{"model": "m/A"}, {"model": "m/B"}]}],
                "aggregation_layer": {"model": "m/AGG"},
            }
        )
    )
    ran = CliRunner().invoke(
        cli, ["run", "Why?", "-c", str(config), "--report", str(tmp_path / "run.html")]
    )
    assert ran.exit_code == 0, ran.output
    assert len(bars(Dom((tmp_path / "run.html").read_text()))) == 3
    (tmp_path / "in.jsonl").write_text('"one"\n"two"\n')
    batch = CliRunner().invoke(
        cli,
        ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "-c", str(config),
         "--no-progress", "--report", str(tmp_path / "batch.html")],
    )  # fmt: skip
    assert batch.exit_code == 0, batch.output
    assert Dom((tmp_path / "batch.html").read_text()).text_by_id["total-queries"] == "2"
    write_batch_report(tmp_path / "out.jsonl", tmp_path / "again.html")  # README's Python form
    assert (tmp_path / "again.html").read_text() == (tmp_path / "batch.html").read_text()
    fake.script("m/A", Reply(status=400))
    fake.script("m/B", Reply(status=400))
    failed = CliRunner().invoke(
        cli, ["run", "Why?", "-c", str(config), "--report", str(tmp_path / "failed.html")]
    )
    assert failed.exit_code == 1
    assert "AllNeuronsFailed" in Dom((tmp_path / "failed.html").read_text()).text_by_id["error"]
