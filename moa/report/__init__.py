"""Run reports: one self-contained HTML file (inline CSS and JS, nothing fetched) showing a
run's calls as bars per layer on a shared time axis, tokens and cost per call and in total,
each answer, what the aggregator was shown and the final answer; for a batch, latency and
cost distributions, failures by kind and the slowest queries.

    from moa.report import write_report
    write_report(result, "run.html")          # a MoAResult
    write_batch_report("out.jsonl", "batch.html")

Every text from a model, a query or an error is HTML-escaped by the template engine
(Jinja2 with autoescaping), so an answer containing `<script>` shows as text.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moa.report._view import batch_view, from_result, run_view

if TYPE_CHECKING:
    from jinja2 import Environment

    from moa.result import MoAResult

__all__ = [
    "render_batch_report",
    "render_error_report",
    "render_report",
    "write_batch_report",
    "write_report",
]


def format_seconds(value: float | None) -> str:
    if value is None:
        return "\u2013"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def format_money(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"${value:.6f}" if value < 0.01 else f"${value:.4f}"


def _tokens(usage: Any) -> str:
    if usage is None:
        return "\u2013"
    return f"{usage.prompt_tokens}+{usage.completion_tokens}"


@functools.cache
def _environment() -> Environment:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("moa.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(secs=format_seconds, money=format_money, tokens=_tokens)
    env.globals.update(format_seconds=format_seconds, format_money=format_money)
    return env


def render_report(result: MoAResult, *, title: str = "moa run") -> str:
    """The HTML report of `result`."""
    template = _environment().get_template("run.html.j2")
    return template.render(run=from_result(result), title=title)


def render_error_report(error: BaseException, query: str, *, title: str = "moa run") -> str:
    """The HTML report of a run that failed: the layers it completed (from the error's
    `layers`, as `AllNeuronsFailed` and `AggregationFailed` carry them) and the error."""
    layers = getattr(error, "layers", None)
    view = run_view(query=query, layers=tuple(layers or ()), error=error)
    return _environment().get_template("run.html.j2").render(run=view, title=title)


def write_report(result: MoAResult, path: str | Path, *, title: str = "moa run") -> Path:
    """Write the HTML report of `result` to `path`; returns the path."""
    target = Path(path)
    target.write_text(render_report(result, title=title), encoding="utf-8")
    return target


def render_batch_report(
    records: Iterable[Mapping[str, Any]], *, title: str = "moa batch", slowest: int = 10
) -> str:
    """The HTML report of a batch from its output records (the lines `moa batch` writes)."""
    view = batch_view(records, slowest=slowest)
    return _environment().get_template("batch.html.j2").render(batch=view, title=title)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The readable records of a `moa batch` output file (unreadable lines are skipped, as
    the batch runner skips them)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def write_batch_report(
    records: str | Path | Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str = "moa batch",
) -> Path:
    """Write the HTML report of a batch (its output file, or its records) to `path`."""
    rows = read_records(records) if isinstance(records, (str, Path)) else records
    target = Path(path)
    target.write_text(render_batch_report(rows, title=title), encoding="utf-8")
    return target
