"""What `moa eval` shows: the table on stdout, the per-item JSON Lines and the HTML report.

The HTML page is self-contained (inline CSS and SVG, no script, nothing fetched) and every
piece of text from the data or a model is escaped.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from moa.eval.evaluate import Evaluation

__all__ = ["item_records", "pareto", "render_html", "render_table", "write_items"]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _tokens(system: dict[str, Any]) -> float:
    usage = system["usage"]
    return float((usage["prompt_tokens"] or 0) + (usage["completion_tokens"] or 0))


def render_table(summary: dict[str, Any]) -> Any:
    """A rich Table of the systems, then the comparisons in words."""
    from rich.table import Table

    binary = summary["binary"]
    table = Table(title=f"moa eval: {summary['items']} items, scorer {summary['scorer']}")
    columns = ("system", "kind", "n", "accuracy" if binary else "score", "95% CI",
               "tokens/item", "cost/item", "s p50", "s p95", "compute s/item",
               "errors")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("system", "kind") else "right")
    for s in summary["systems"]:
        low, high = s["ci95"]
        score = _fmt(s["score"])
        if binary and s.get("correct") is not None:
            score = f"{score} ({s['correct']}/{s['n']})"
        table.add_row(
            s["name"], s["kind"], str(s["n"]), score, f"[{_fmt(low)}, {_fmt(high)}]",
            _fmt(_tokens(s), 0), _fmt(s["cost"], 6), _fmt(s["seconds_p50"], 2),
            _fmt(s["seconds_p95"], 2), _fmt(s["compute_seconds"], 2), str(s["errors"]),
        )  # fmt: skip
    return table


def comparison_lines(summary: dict[str, Any]) -> list[str]:
    """One sentence per comparison."""
    lines = []
    for c in summary["comparisons"]:
        low, high = c["ci95"]
        p = f", McNemar p={c['p_value']:.3g}" if c["p_value"] is not None else ""
        lines.append(
            f"{c['system']} - {c['baseline']}: {_fmt(c['diff'])} [{_fmt(low)}, {_fmt(high)}]"
            f" over {c['n']} items{p}; {c['note']}"
        )
    return lines


def item_records(evaluation: Evaluation) -> Iterator[dict[str, Any]]:
    """One record per item per system (what `-o` writes)."""
    for result in evaluation.results:
        for item, run, score in zip(evaluation.items, result.runs, result.scores, strict=True):
            yield {
                "id": item.id,
                "system": result.system.name,
                "kind": result.system.kind,
                "answer": run.answer if result.system.kind != "oracle" else None,
                "extracted": score.extracted,
                "score": score.value,
                "note": score.note,
                "error": run.error,
                "prompt_tokens": run.prompt_tokens,
                "completion_tokens": run.completion_tokens,
                "cost": run.cost,
                "seconds": round(run.seconds, 4),
                "cached_calls": run.cached_calls,
                "calls": run.calls,
            }


def write_items(evaluation: Evaluation, path: Path) -> None:
    """Write the per-item records (replacing the file as a whole)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in item_records(evaluation):
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)


def pareto(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which points are on the front: no other point is at most as costly (x) and at least as
    good (y), and strictly better in one."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            ox <= x and oy >= y and (ox < x or oy > y)
            for j, (ox, oy) in enumerate(points)
            if j != i
        )
        front.append(not dominated)
    return front


def _chart(summary: dict[str, Any]) -> str:
    systems = [s for s in summary["systems"] if s["score"] is not None]
    if not systems:
        return "<p>No scored system to chart.</p>"
    use_cost = all(s["cost"] is not None for s in systems) and any(s["cost"] for s in systems)
    xs = [float(s["cost"]) if use_cost else _tokens(s) for s in systems]
    ys = [float(s["score"]) for s in systems]
    front = pareto(list(zip(xs, ys, strict=True)))
    width, height, pad = 640, 360, 60
    x_max = max(xs) or 1.0
    y_min, y_max = min(0.0, min(ys)), max(1.0, max(ys))

    def sx(x: float) -> float:
        return pad + (width - 2 * pad) * (x / x_max)

    def sy(y: float) -> float:
        return height - pad - (height - 2 * pad) * ((y - y_min) / ((y_max - y_min) or 1.0))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'role="img" aria-label="quality versus cost">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="#333"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#333"/>',
        f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">'
        f"{'USD per item' if use_cost else 'tokens per item'}</text>",
        f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" '
        f'text-anchor="middle">{html.escape(summary["scorer"])} score</text>',
    ]
    on_front = sorted((x, y) for x, y, f in zip(xs, ys, front, strict=True) if f)
    if len(on_front) > 1:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in on_front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#c60" stroke-dasharray="4"/>')
    for s, x, y, f in zip(systems, xs, ys, front, strict=True):
        colour = "#c60" if f else "#369"
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{colour}"/>')
        parts.append(
            f'<text x="{sx(x) + 7:.1f}" y="{sy(y) - 7:.1f}" font-size="11">'
            f"{html.escape(s['name'])}{' (Pareto)' if f else ''}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _query_text(query: Any) -> str:
    return query if isinstance(query, str) else json.dumps(query, ensure_ascii=False)


def render_html(evaluation: Evaluation, summary: dict[str, Any], *, max_rows: int = 300) -> str:
    """The self-contained HTML report."""
    e = html.escape
    rows = []
    for s in summary["systems"]:
        low, high = s["ci95"]
        rows.append(
            "<tr>" + "".join(f"<td>{e(_fmt(v))}</td>" for v in (
                s["name"], s["kind"], s["n"], s["score"], f"[{_fmt(low)}, {_fmt(high)}]",
                _tokens(s), s["cost"], s["seconds_p50"], s["seconds_p95"], s["errors"],
            )) + "</tr>"
        )  # fmt: skip
    comparisons = "".join(f"<li>{e(line)}</li>" for line in comparison_lines(summary))
    names = [r.system.name for r in evaluation.results]
    disagreements = []
    for i, item in enumerate(evaluation.items):
        values = {r.scores[i].value for r in evaluation.results}
        if len(values) <= 1:
            continue
        cells = []
        for r in evaluation.results:
            score = r.scores[i]
            answer = r.runs[i].answer if r.system.kind != "oracle" else score.note
            title = e((answer or r.runs[i].error or "")[:2000], quote=True)
            cells.append(
                f'<td title="{title}">{e(_fmt(score.value))} {e(score.extracted or "")}</td>'
            )
        disagreements.append(
            f"<tr><td>{e(str(item.id))}</td><td>{e(_query_text(item.query)[:300])}</td>"
            + "".join(cells) + "</tr>"
        )  # fmt: skip
        if len(disagreements) >= max_rows:
            break
    head = "".join(f"<th>{e(n)}</th>" for n in names)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>moa eval</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top}}</style></head>
<body><h1>moa eval</h1>
<p>{summary["items"]} items, scorer <b>{e(summary["scorer"])}</b>, baseline
<b>{e(str(summary["baseline"]))}</b>; calls from the cache: {summary["cache"]["hits"]},
made: {summary["cache"]["misses"]}.</p>
<table><tr><th>system</th><th>kind</th><th>n</th><th>score</th><th>95% CI</th>
<th>tokens/item</th><th>USD/item</th><th>s p50</th><th>s p95</th><th>errors</th></tr>
{"".join(rows)}</table>
<h2>Against the baseline</h2><ul>{comparisons}</ul>
<h2>Quality against cost</h2>{_chart(summary)}
<h2>Items where the systems disagree ({len(disagreements)} shown)</h2>
<p>Hover a cell for the whole answer.</p>
<table><tr><th>id</th><th>query</th>{head}</tr>{"".join(disagreements)}</table>
</body></html>
"""
