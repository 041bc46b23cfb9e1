"""`moa eval`: does the mixture beat its own best model, on your data? (see `moa.eval`)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from moa._runner import run
from moa.cli._common import fail, stderr

__all__ = ["eval_command"]


def _cache_dir() -> Path:
    env = os.environ.get("MOA_EVAL_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moa" / "eval"


@click.command("eval")
@click.argument(
    "data", required=False, type=click.Path(dir_okay=False, path_type=Path), metavar="[DATA]"
)
@click.option("--dataset", help="A registered dataset instead of DATA (e.g. gsm8k).")
@click.option(
    "-c", "--config", "configs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
    help="The mixture; repeat to compare other configs too.",
)  # fmt: skip
@click.option("--preset", help="A preset structure as the mixture: together-moa, moa-lite, "
              "self-moa, vote.")  # fmt: skip
@click.option("--model", "models", multiple=True, help="Model of the preset (repeatable).")
@click.option(
    "--baselines", default="singles,self-moa,vote,oracle", show_default=True,
    help="Comma-separated: singles, self-moa, vote, oracle; '' for none.",
)  # fmt: skip
@click.option("--scorer", default="normalized", show_default=True,
              help="exact, normalized, number, choice, regex, contains, code, judge, pairwise, "
              "or a plugin's; options as NAME:key=value,...")  # fmt: skip
@click.option("--judge", help="Judge for the judge/pairwise scorers: a model or a config file.")
@click.option("--baseline", "baseline_name", help="Baseline single of the pairwise scorer.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N items.")
@click.option("--samples", type=click.IntRange(min=1),
              help="Samples of self-moa and vote (default: the first layer's width).")  # fmt: skip
@click.option("--sample-temperature", type=click.FloatRange(min=0), default=0.7,
              show_default=True, help="Temperature of the self-moa/vote samples.")  # fmt: skip
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(min=1),
              help="Items run at the same time per system.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained HTML report.")  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write one JSON line per item per system.")  # fmt: skip
@click.option("--no-cache", is_flag=True, help="Call everything again and keep nothing.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Call cache and run files (default: $MOA_EVAL_CACHE, else ~/.cache/moa/eval).",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def eval_command(
    data: Path | None,
    dataset: str | None,
    configs: tuple[Path, ...],
    preset: str | None,
    models: tuple[str, ...],
    baselines: str,
    scorer: str,
    judge: str | None,
    baseline_name: str | None,
    limit: int | None,
    samples: int | None,
    sample_temperature: float,
    concurrency: int,
    as_json: bool,
    report: Path | None,
    output: Path | None,
    no_cache: bool,
    cache_dir: Path | None,
    no_progress: bool,
) -> None:
    """Compare a mixture with its own models alone, Self-MoA, majority vote and other configs
    on the same items, with 95% intervals, paired tests, tokens, cost and latency.

    DATA is a .jsonl/.json/.csv/.parquet file of {"id", "query", "answer", ...} items, or
    hf:NAME[:CONFIG][@SPLIT]; --dataset NAME uses a registered dataset instead. Every call is
    cached, so rerunning (after a crash, with another scorer or another system) calls nothing
    twice.
    """
    from moa.config import load_config
    from moa.eval.cache import CallCache
    from moa.eval.data import load_dataset, load_file, load_hf
    from moa.eval.evaluate import BASELINES, evaluate
    from moa.eval.scorers import get_scorer

    if (data is None) == (dataset is None):
        fail("give either DATA or --dataset NAME", 2)
    if dataset is not None:
        items = load_dataset(dataset)
    elif str(data).startswith("hf:"):
        items = load_hf(str(data)[3:])
    else:
        assert data is not None
        items = load_file(data)
    if limit is not None:
        items = items[:limit]
    wanted = [b.strip() for b in baselines.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in BASELINES]
    if unknown:
        fail(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}", 2)

    work = Path(tempfile.mkdtemp(prefix="moa-eval-")) if no_cache else (cache_dir or _cache_dir())
    cache = CallCache(None if no_cache else work / "calls.sqlite")

    the_scorer = get_scorer(scorer, **_judge_args(scorer, judge, cache))
    if preset is not None:
        from moa.eval.presets import preset_config

        extract = the_scorer.vote_extract
        mixture = load_config(preset_config(preset, models, samples=samples, extract=extract))
        others = configs
    elif configs:
        mixture = load_config(configs[0])
        others = configs[1:]
    else:
        fail("give the mixture: -c CONFIG or --preset NAME --model MODEL", 2)
    extra = [(path.stem, load_config(path)) for path in others]
    console = stderr()
    progress = None if no_progress else _progress_factory(console)

    async def go() -> Any:
        try:
            return await evaluate(
                items, the_scorer, mixture=mixture, configs=extra, baselines=wanted,
                cache=cache, runs_dir=work / "runs", concurrency=concurrency, samples=samples,
                sample_temperature=sample_temperature, baseline_name=baseline_name,
                progress=progress[1] if progress else None,
            )  # fmt: skip
        finally:
            await the_scorer.aclose()

    try:
        evaluation = run(go(), sigterm=True)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (moa._runner.Terminated)
        message = "interrupted; rerun the same command to resume (every finished call is cached)"
        fail(message, getattr(exc, "exit_code", 130))
    finally:
        if progress is not None:
            progress[0].stop()
        cache.close()
        if no_cache:
            shutil.rmtree(work, ignore_errors=True)
    _emit(evaluation, as_json=as_json, report=report, output=output, console=console)


def _judge_args(scorer: str, judge: str | None, cache: Any = None) -> dict[str, Any]:
    from moa.eval.scorers import parse_scorer_spec

    name, _ = parse_scorer_spec(scorer)
    if name not in ("judge", "pairwise"):
        if judge is not None:
            fail(f"--judge is for the judge and pairwise scorers, not {name!r}", 2)
        return {}
    if judge is None:
        fail(f"the {name} scorer needs --judge MODEL_OR_CONFIG", 2)
    return {"judge": judge, "cache": cache} if cache is not None else {"judge": judge}


def _emit(evaluation: Any, *, as_json: bool, report: Path | None, output: Path | None,
          console: Any) -> None:  # fmt: skip
    from moa.eval.report import comparison_lines, render_html, render_table, write_items

    summary = evaluation.summary()
    if output is not None:
        write_items(evaluation, output)
    if report is not None:
        report.write_text(render_html(evaluation, summary), encoding="utf-8")
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    from rich.console import Console

    out = Console(file=sys.stdout, highlight=False, width=max(160, console.width))
    out.print(render_table(summary))
    for line in comparison_lines(summary):
        out.print(line)
    cache = summary["cache"]
    out.print(f"calls: {cache['misses']} made, {cache['hits']} from the cache")


def _progress_factory(
    console: Any,
) -> tuple[Any, Callable[[str, int], tuple[Callable[[int], None], Callable[[Any], None]]]]:
    from moa.cli._batch import _progress

    progress = _progress(console)
    progress.start()

    def for_system(name: str, total: int) -> tuple[Callable[[int], None], Callable[[Any], None]]:
        task = progress.add_task(name, total=total, errors=0)
        errors = [0]

        def on_start(todo: int) -> None:
            progress.update(task, completed=total - todo)

        def on_item(record: Any) -> None:
            errors[0] += 1 if record.get("error") is not None else 0
            progress.update(task, advance=1, errors=errors[0])

        return on_start, on_item

    return progress, for_system
