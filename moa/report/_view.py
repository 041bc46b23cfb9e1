"""What a report shows, computed from a run's trace: plain data for the templates (no HTML
here; every text is escaped by the template engine)."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moa.result import LayerResult, MoAResult, NeuronResult, Truncation, Usage, total_cost

__all__ = ["BatchView", "CallView", "RunView", "batch_view", "run_view"]

AGGREGATION = "aggregation_layer"


@dataclass(frozen=True)
class CallView:
    """One call as a bar and a row: where it sits on the time axis (percent) and its state."""

    number: int
    call: NeuronResult
    state: str  # ok | retried | fallback | timed-out | failed
    left: float
    width: float

    @property
    def label(self) -> str:
        return (
            f"{self.call.model} (fallback {self.call.fallback})"
            if self.call.fallback
            else (self.call.model)
        )

    @property
    def tooltip(self) -> str:
        c = self.call
        parts = [f"{c.path} {c.model}", f"{c.start:.3f}-{c.end:.3f} s ({c.seconds:.3f} s)"]
        if c.attempts > 1:
            parts.append(f"{c.attempts} attempts")
        if c.fallback:
            parts.append(f"answered by fallback {c.fallback}")
        if c.error:
            parts.append(f"{c.error_type}: {c.error}")
        return "\n".join(parts)


@dataclass(frozen=True)
class LayerView:
    name: str
    title: str
    calls: tuple[CallView, ...]
    seconds: float | None = None
    truncations: tuple[Truncation, ...] = ()


@dataclass(frozen=True)
class ShownView:
    """One answer as the aggregator saw it: position, normalised weight, any cut."""

    position: int
    call: NeuronResult
    weight: float
    cut: Truncation | None


@dataclass(frozen=True)
class RunView:
    query: str
    annotated_query: str | None
    layers: tuple[LayerView, ...]
    calls: tuple[CallView, ...]
    total_seconds: float
    first_call: float  # seconds from the start of the run to the first call
    span_seconds: float  # from the first call's start to the last call's end: the time axis
    axis: tuple[tuple[float, float], ...]  # (percent, seconds since the first call) ticks
    usage: Usage
    cost: float | None
    content: str | None
    shown: tuple[ShownView, ...]
    not_shown: tuple[NeuronResult, ...]
    error: str | None = None
    error_type: str | None = None
    partial: bool = False
    counts: Mapping[str, int] = field(default_factory=dict)


def _state(call: NeuronResult) -> str:
    if call.timed_out:
        return "timed-out"
    if not call.ok:
        return "failed"
    if call.fallback:
        return "fallback"
    if call.attempts > 1:
        return "retried"
    return "ok"


def _axis(total: float) -> tuple[tuple[float, float], ...]:
    """Ticks at round steps (1, 2 or 5 times a power of ten), about five of them."""
    if total <= 0:
        return ((0.0, 0.0),)
    raw = total / 5
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    ticks, value = [], 0.0
    while value <= total + 1e-9:
        ticks.append((100 * value / total, value))
        value += step
    return tuple(ticks)


def _title(name: str) -> str:
    if name.startswith("proposal_layers["):
        return f"Layer {int(name[len('proposal_layers[') : -1]) + 1}"
    return {"annotator": "Annotator", AGGREGATION: "Aggregator"}.get(name, name)


def run_view(
    *,
    query: str,
    layers: Sequence[LayerResult],
    annotator: NeuronResult | None = None,
    annotated_query: str | None = None,
    aggregator: NeuronResult | None = None,
    aggregated: Sequence[str] = (),
    truncations: Sequence[Truncation] = (),
    total_seconds: float | None = None,
    content: str | None = None,
    error: BaseException | None = None,
) -> RunView:
    """The view of a run that answered (`aggregator` set) or failed part-way (`error`)."""
    groups: list[tuple[str, list[NeuronResult], float | None, tuple[Truncation, ...]]] = []
    if annotator is not None:
        groups.append(("annotator", [annotator], None, ()))
    for layer in layers:
        groups.append((layer.name, list(layer.neurons), layer.seconds, layer.truncations))
    if aggregator is not None:
        cuts = tuple(t for t in truncations if t.layer == AGGREGATION)
        groups.append((AGGREGATION, [aggregator], None, cuts))
    every = [c for _, calls, _, _ in groups for c in calls]
    # The axis runs from the first call's start (before it, the neurons were loading) to
    # the last call's end.
    first = min([c.start for c in every], default=0.0)
    end = max([c.end for c in every], default=0.0)
    span = max(end - first, 1e-9)
    number = 0
    views: list[LayerView] = []
    for name, calls, seconds, cuts in groups:
        bars = []
        for call in calls:
            number += 1
            left = 100 * max(call.start - first, 0.0) / span
            width = max(100 * (call.end - call.start) / span, 0.25)
            bars.append(CallView(number, call, _state(call), left, min(width, 100 - left)))
        views.append(LayerView(name, _title(name), tuple(bars), seconds, cuts))
    all_calls = tuple(c for v in views for c in v.calls)
    last = layers[-1].neurons if layers else ()
    by_path = {c.path: c for c in last}
    shown_calls = [by_path[p] for p in aggregated if p in by_path]
    total_weight = sum(c.weight for c in shown_calls) or 1.0
    cut_by_path = {t.path: t for t in truncations if t.layer == AGGREGATION}
    shown = tuple(
        ShownView(i, c, c.weight / total_weight, cut_by_path.get(c.path))
        for i, c in enumerate(shown_calls, 1)
    )
    shown_paths = {c.path for c in shown_calls}
    not_shown = tuple(c for c in last if c.path not in shown_paths) if aggregator else ()
    return RunView(
        query=query,
        annotated_query=annotated_query,
        layers=tuple(views),
        calls=all_calls,
        total_seconds=max(total_seconds or 0.0, end),
        first_call=first,
        span_seconds=span,
        axis=_axis(span),
        usage=Usage.total(c.usage for c in every),
        cost=total_cost(every),
        content=content,
        shown=shown,
        not_shown=not_shown,
        error=str(error) if error is not None else None,
        error_type=type(error).__name__ if error is not None else None,
        partial=any(c.timed_out for c in every),
        counts=Counter(v.state for v in all_calls),
    )


def from_result(result: MoAResult) -> RunView:
    return run_view(
        query=result.query,
        layers=result.layers,
        annotator=result.annotator,
        annotated_query=result.annotated_query,
        aggregator=result.aggregator,
        aggregated=result.aggregated,
        truncations=result.truncations,
        total_seconds=result.total_completion_time,
        content=result.content,
    )


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    count: int
    height: float  # percent of the tallest bin


@dataclass(frozen=True)
class QueryView:
    id: Any
    seconds: float
    cost: float | None
    error_type: str | None
    error: str | None
    run: RunView | None


@dataclass(frozen=True)
class BatchView:
    total: int
    failed: int
    seconds: tuple[float, ...]
    latency: Mapping[str, float]
    latency_bins: tuple[Bin, ...]
    costs: tuple[float, ...]
    cost_total: float | None
    cost_bins: tuple[Bin, ...]
    unknown_cost: int
    usage: Usage
    query_failures: tuple[tuple[str, int], ...]
    call_failures: tuple[tuple[str, int], ...]
    slowest: tuple[QueryView, ...]


def _bins(values: Sequence[float], count: int = 10) -> tuple[Bin, ...]:
    if not values:
        return ()
    low, high = min(values), max(values)
    width = (high - low) / count if high > low else 1.0
    counts = [0] * count
    for v in values:
        counts[min(int((v - low) / width), count - 1)] += 1
    top = max(counts) or 1
    return tuple(
        Bin(low + i * width, low + (i + 1) * width, n, 100 * n / top) for i, n in enumerate(counts)
    )


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def batch_view(records: Iterable[Mapping[str, Any]], *, slowest: int = 10) -> BatchView:
    """The view of a batch from its output records (`moa batch` JSON Lines)."""
    rows: list[QueryView] = []
    call_failures: Counter[str] = Counter()
    usage = Usage()
    for record in records:
        result = None
        if isinstance(record.get("result"), Mapping):
            result = MoAResult.model_validate(record["result"])
            usage = usage + result.usage
            for call in result.neurons:
                if call.timed_out:
                    call_failures["cut off by the layer deadline"] += 1
                elif call.error_type:
                    call_failures[call.error_type] += 1
                elif call.fallback:
                    call_failures["failed, a fallback answered"] += 1
                elif call.attempts > 1:
                    call_failures["failed, answered on retry"] += 1
        cost = record.get("cost")
        rows.append(
            QueryView(
                id=record.get("id"),
                seconds=float(record.get("seconds") or 0.0),
                cost=float(cost) if isinstance(cost, (int, float)) else None,
                error_type=record.get("error_type"),
                error=record.get("error"),
                run=from_result(result) if result is not None else None,
            )
        )
    seconds = tuple(r.seconds for r in rows)
    ok_costs = tuple(r.cost for r in rows if r.cost is not None)
    unknown = sum(1 for r in rows if r.cost is None and r.error is None)
    latency = (
        {
            "p50": statistics.median(seconds),
            "p90": _quantile(seconds, 0.9),
            "max": max(seconds),
            "mean": statistics.fmean(seconds),
        }
        if seconds
        else {}
    )
    failures = Counter(r.error_type or "error" for r in rows if r.error is not None)
    return BatchView(
        total=len(rows),
        failed=sum(1 for r in rows if r.error is not None),
        seconds=seconds,
        latency=latency,
        latency_bins=_bins(seconds),
        costs=ok_costs,
        cost_total=sum(ok_costs) if ok_costs and not unknown else None,
        cost_bins=_bins(ok_costs),
        unknown_cost=unknown,
        usage=usage,
        query_failures=tuple(failures.most_common()),
        call_failures=tuple(call_failures.most_common()),
        slowest=tuple(sorted(rows, key=lambda r: -r.seconds)[:slowest]),
    )
