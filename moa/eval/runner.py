"""Running systems over items: `moa batch`'s worker pool and resumable run files, with every
neuron call going through the call cache and each item's calls timed in a ledger.

Each system's raw results go to a run file `<runs_dir>/<name>-<fingerprint>.jsonl` written by
`moa.adapters.batch.run_batch` (one whole line per item, fsynced): a killed eval resumes where it
stopped, and the cache covers the calls of items that were half done. Items that failed are
run again on the next run.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from moa.adapters.batch import BatchItem, run_batch
from moa.eval.cache import CallCache, instrument, ledger
from moa.eval.data import EvalItem
from moa.eval.systems import System
from moa.mixture import MixtureOfAgents, Query
from moa.result import MoAResult

__all__ = ["EvalResult", "ItemRun", "run_system"]


class EvalResult(MoAResult):
    """A `MoAResult` plus each call's measured seconds: `calls[path] = [seconds, cached,
    queue_seconds]`."""

    calls: dict[str, tuple[float, bool, float]] = Field(default_factory=dict)


@dataclass
class ItemRun:
    """What one system did on one item."""

    id: str | int
    answer: str | None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    seconds: float = 0.0
    compute_seconds: float = 0.0
    queue_seconds: float = 0.0
    cached_calls: int = 0
    calls: int = 0
    samples: list[str | None] = field(default_factory=list)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def _timings(result: dict[str, Any]) -> tuple[float, float, float, int, int]:
    """(critical-path seconds, sum of call seconds, queue seconds, cached calls, calls)."""
    calls: dict[str, Any] = result.get("calls") or {}

    def seconds(neuron: dict[str, Any]) -> float:
        record = calls.get(neuron["path"])
        return float(record[0]) - float(record[2]) if record else float(neuron["seconds"])

    critical = total = 0.0
    stages = [[result["annotator"]]] if result.get("annotator") else []
    stages += [layer["neurons"] for layer in result.get("layers", ())]
    stages.append([result["aggregator"]])
    for stage in stages:
        times = [seconds(n) for n in stage]
        critical += max(times, default=0.0)
        total += sum(times)
    queue = sum(float(r[2]) for r in calls.values())
    cached = sum(1 for r in calls.values() if r[1])
    return critical, total, queue, cached, len(calls)


def item_run(record: dict[str, Any]) -> ItemRun:
    """An `ItemRun` from one line of a run file."""
    result = record.get("result")
    if record.get("error") is not None or not isinstance(result, dict):
        return ItemRun(record["id"], None, error=str(record.get("error")))
    usage = result.get("usage") or {}
    critical, total, queue, cached, calls = _timings(result)
    first = result["layers"][0]["neurons"] if result.get("layers") else []
    return ItemRun(
        id=record["id"],
        answer=result.get("content"),
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        cost=result.get("cost"),
        seconds=critical,
        compute_seconds=total,
        queue_seconds=queue,
        cached_calls=cached,
        calls=calls,
        samples=[n.get("text") for n in first],
    )


def _read_records(path: Path) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records[json.dumps(record.get("id"))] = record
    return records


def _prepare_run_file(path: Path) -> None:
    """Create the run file's folder; drop failed (and unreadable) records so that
    `run_batch` runs those items again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        return
    lines = []
    dropped = False
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped = True
            continue
        if not isinstance(record, dict) or record.get("error") is not None:
            dropped = True
            continue
        lines.append(line)
    if dropped:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        tmp.replace(path)


async def run_system(
    system: System,
    items: Sequence[EvalItem],
    *,
    cache: CallCache,
    runs_dir: Path,
    concurrency: int = 4,
    sync: bool = True,
    on_start: Callable[[int], None] | None = None,
    on_item: Callable[[dict[str, Any]], None] | None = None,
) -> list[ItemRun]:
    """Run `system` on every item not yet in its run file; return every item's run, in the
    order of `items`."""
    assert system.config is not None
    path = runs_dir / f"{_slug(system.name)}-{system.fingerprint}.jsonl"
    await asyncio.to_thread(_prepare_run_file, path)
    moa = instrument(MixtureOfAgents.from_config(system.config), cache)

    async def process(query: Query) -> EvalResult:
        with ledger() as calls:
            result = await moa.process(query)
        timed = {path: (c.seconds, c.cached, c.queue) for path, c in calls.items()}
        return EvalResult(**{name: getattr(result, name) for name in MoAResult.model_fields},
                          calls=timed)  # fmt: skip

    batch = [BatchItem(item.id, item.query) for item in items]
    try:
        await run_batch(
            moa, batch, path, concurrency=concurrency, sync=sync,
            on_start=on_start, on_item=on_item, run=process,
        )  # fmt: skip
    finally:
        await moa.aclose()
    records = await asyncio.to_thread(_read_records, path)
    runs = []
    for item in items:
        record = records.get(json.dumps(item.id))
        runs.append(item_run(record) if record else ItemRun(item.id, None, error="not run"))
    return runs
