"""`evaluate()`: run the systems on the same items, score them, and compute the statistics.

The summary (`Evaluation.summary()`, what `moa eval --json` prints) has `systems` (each:
`name`, `kind`, `n`, `correct` for binary scorers, `score`, `ci95`, `usage`, `cost`,
`seconds_p50`, `seconds_p95`, ...) and `comparisons` (each system against the best single:
`system`, `baseline`, `diff` = system minus baseline, `ci95` from a paired bootstrap,
`p_value` from an exact McNemar test for binary scorers, and `note` in words).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moa.config import MoAConfig
from moa.eval.cache import CallCache
from moa.eval.data import EvalItem
from moa.eval.runner import ItemRun, run_system
from moa.eval.scorers import Score, Scorer
from moa.eval.stats import bootstrap_mean, mcnemar_exact, paired_bootstrap, percentile, wilson
from moa.eval.systems import System, sampled_systems, single_systems

__all__ = ["BASELINES", "Evaluation", "SystemResult", "evaluate"]

BASELINES = ("singles", "self-moa", "vote", "oracle")


@dataclass
class SystemResult:
    """A system's runs and scores, item by item (same order as the items)."""

    system: System
    runs: list[ItemRun]
    scores: list[Score]
    sample_scores: list[list[Score]] = field(default_factory=list)

    @property
    def values(self) -> list[float | None]:
        return [s.value for s in self.scores]

    def mean(self) -> float:
        got = [v for v in self.values if v is not None]
        return sum(got) / len(got) if got else math.nan


@dataclass
class Evaluation:
    """Everything one `moa eval` run measured."""

    items: list[EvalItem]
    results: list[SystemResult]
    binary: bool
    scorer: str
    baseline: str | None
    cache_hits: int = 0
    cache_misses: int = 0

    def summary(self) -> dict[str, Any]:
        """The JSON object `moa eval --json` prints."""
        systems = [_system_summary(r, self.binary) for r in self.results]
        comparisons = []
        base = next((r for r in self.results if r.system.name == self.baseline), None)
        if base is not None:
            for result in self.results:
                if result is not base:
                    comparisons.append(_compare(result, base, self.binary))
        return {
            "scorer": self.scorer,
            "binary": self.binary,
            "items": len(self.items),
            "baseline": self.baseline,
            "systems": systems,
            "comparisons": comparisons,
            "cache": {"hits": self.cache_hits, "misses": self.cache_misses},
        }


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(value, digits)


def _system_summary(result: SystemResult, binary: bool) -> dict[str, Any]:
    values = [v for v in result.values if v is not None]
    n = len(values)
    runs = result.runs
    ran = [r for r in runs if r.error is None]
    summary: dict[str, Any] = {"name": result.system.name, "kind": result.system.kind, "n": n}
    if binary:
        correct = int(sum(values))
        summary["correct"] = correct
        low, high = wilson(correct, n)
    else:
        low, high = bootstrap_mean(values)
    summary["score"] = _round(sum(values) / n if n else None)
    summary["ci95"] = [_round(low), _round(high)]
    count = len(runs) or 1
    summary["usage"] = {
        "prompt_tokens": _round(sum(r.prompt_tokens for r in runs) / count, 1),
        "completion_tokens": _round(sum(r.completion_tokens for r in runs) / count, 1),
        "per": "item",
    }
    costs = [r.cost for r in ran]
    summary["cost"] = (
        _round(sum(c for c in costs if c is not None) / len(ran), 6)
        if ran and all(c is not None for c in costs)
        else None
    )
    seconds = [r.seconds for r in ran]
    summary["seconds_p50"] = _round(percentile(seconds, 50), 3)
    summary["seconds_p95"] = _round(percentile(seconds, 95), 3)
    summary["compute_seconds"] = _round(
        sum(r.compute_seconds for r in ran) / len(ran) if ran else None, 3
    )
    summary["queue_seconds"] = _round(
        sum(r.queue_seconds for r in ran) / len(ran) if ran else None, 3
    )
    summary["errors"] = sum(1 for r in runs if r.error is not None)
    summary["unscored"] = len(result.values) - n
    return summary


def _compare(result: SystemResult, base: SystemResult, binary: bool) -> dict[str, Any]:
    pairs = [
        (s, b)
        for s, b in zip(result.values, base.values, strict=True)
        if s is not None and b is not None
    ]
    system_values = [s for s, _ in pairs]
    base_values = [b for _, b in pairs]
    diff, (low, high) = paired_bootstrap(system_values, base_values)
    p_value = None
    if binary:
        only_system = sum(1 for s, b in pairs if s > b)
        only_base = sum(1 for s, b in pairs if b > s)
        p_value = mcnemar_exact(only_system, only_base)
    if not pairs:
        note = "no item was scored for both"
    elif low <= 0 <= high:
        note = "the interval includes 0: no evidence of a difference on these items"
    elif low > 0:
        note = f"better than {base.system.name}: the interval excludes 0"
    else:
        note = f"worse than {base.system.name}: the interval excludes 0"
    return {
        "system": result.system.name,
        "baseline": base.system.name,
        "n": len(pairs),
        "diff": _round(diff),
        "ci95": [_round(low), _round(high)],
        "p_value": float(f"{p_value:.6g}") if p_value is not None else None,
        "note": note,
    }


async def _score_all(scorer: Scorer, items: Sequence[EvalItem], runs: Sequence[ItemRun],
                     baseline: Sequence[ItemRun] | None) -> list[Score]:  # fmt: skip
    scores = []
    for i, (item, run) in enumerate(zip(items, runs, strict=True)):
        if run.answer is None:
            scores.append(Score(0.0 if scorer.binary else None, None, f"error: {run.error}"))
            continue
        other = baseline[i].answer if baseline is not None else None
        if scorer.pairwise and other is None:
            scores.append(Score(None, None, "the baseline has no answer to compare with"))
            continue
        scores.append(await scorer.score(run.answer, item, baseline=other))
    return scores


async def evaluate(
    items: Sequence[EvalItem],
    scorer: Scorer,
    *,
    mixture: MoAConfig | None,
    configs: Sequence[tuple[str, MoAConfig]] = (),
    baselines: Sequence[str] = BASELINES,
    cache: CallCache,
    runs_dir: Path,
    concurrency: int = 4,
    samples: int | None = None,
    sample_temperature: float | None = None,
    baseline_name: str | None = None,
    sync: bool = True,
    progress: Callable[[str, int], tuple[Callable[[int], None], Callable[[dict[str, Any]], None]]]
    | None = None,
) -> Evaluation:
    """Run and score every system; see the module docstring for what is compared."""
    items = list(items)
    results: list[SystemResult] = []

    async def run(system: System, baseline_runs: Sequence[ItemRun] | None = None) -> SystemResult:
        hooks = progress(system.name, len(items)) if progress is not None else (None, None)
        runs = await run_system(
            system, items, cache=cache, runs_dir=runs_dir, concurrency=concurrency,
            sync=sync, on_start=hooks[0], on_item=hooks[1],
        )  # fmt: skip
        result = SystemResult(system, runs, await _score_all(scorer, items, runs, baseline_runs))
        results.append(result)
        return result

    extract = scorer.vote_extract
    singles: list[SystemResult] = []
    pending_singles = single_systems(mixture, extract) if mixture is not None else []
    pairwise_base: SystemResult | None = None
    if scorer.pairwise:
        # The pairwise baseline must be answered before anything is compared with it.
        base_systems = [s for s in pending_singles if s.name == baseline_name] or pending_singles
        if not base_systems:
            raise ValueError("a pairwise scorer needs a mixture whose singles give a baseline")
        pairwise_base = await run(base_systems[0], None)
        pairwise_base.scores = [Score(0.5, None, "the baseline itself") for _ in items]
        singles.append(pairwise_base)
    base_runs = pairwise_base.runs if pairwise_base is not None else None
    if "singles" in baselines or {"self-moa", "vote", "oracle"} & set(baselines):
        for system in pending_singles:
            if pairwise_base is None or system is not pairwise_base.system:
                singles.append(await run(system, base_runs))
    if mixture is not None:
        await run(System("mixture", "mixture", mixture), base_runs)
    for name, config in configs:
        await run(System(name, "config", config), base_runs)
    best = max(singles, key=lambda r: r.mean(), default=None) if singles else None
    if best is not None and pairwise_base is not None:
        best = pairwise_base
    wanted = tuple(k for k, b in (("self_moa", "self-moa"), ("vote", "vote")) if b in baselines)
    if "oracle" in baselines and "vote" not in wanted:
        wanted = (*wanted, "vote")
    if best is not None and mixture is not None and wanted:
        for system in sampled_systems(
            mixture, best.system, width=samples, temperature=sample_temperature,
            extract=extract, kinds=wanted,
        ):  # fmt: skip
            result = await run(system, base_runs)
            if system.kind == "vote" and "oracle" in baselines and scorer.binary:
                results.append(await _oracle(result, items, scorer))
            if system.kind == "vote" and "vote" not in baselines:
                results.remove(result)
    if "singles" not in baselines:
        results = [r for r in results if r.system.kind != "single" or r is best]
    baseline = (
        best.system.name if best is not None else (results[0].system.name if results else None)
    )
    return Evaluation(
        items=items, results=results, binary=scorer.binary, scorer=scorer.name, baseline=baseline,
        cache_hits=cache.hits, cache_misses=cache.misses,
    )  # fmt: skip


async def _oracle(vote: SystemResult, items: Sequence[EvalItem], scorer: Scorer) -> SystemResult:
    """Any sample of the vote system correct: the upper bound of choosing among samples."""
    sample_scores = []
    scores = []
    for item, run in zip(items, vote.runs, strict=True):
        per = [
            await scorer.score(text, item) if text is not None else Score(0.0, None, "no answer")
            for text in run.samples
        ]
        sample_scores.append(per)
        hit = any(s.value == 1.0 for s in per)
        scores.append(
            Score(
                1.0 if hit else 0.0,
                None,
                f"{sum(s.value == 1.0 for s in per)}/{len(per)} samples correct",
            )
        )
    name = vote.system.name.replace("vote(", "oracle(", 1)
    return SystemResult(System(name, "oracle", None), vote.runs, scores, sample_scores)
