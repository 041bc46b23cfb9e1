"""`moa batch`: run a file of queries (JSON Lines or Parquet), resumably, with a progress bar,
in this process or on a Ray cluster (`--backend ray`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from moa._runner import run
from moa.cli._common import build, config_option, config_source, fail, stderr

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["batch"]


@click.command()
@click.argument("input_path", metavar="INPUT")
@click.option(
    "-o",
    "--output",
    required=True,
    help="JSON Lines file results are appended to, or a directory of Parquet shards (a path "
    "or URI ending with .parquet); ids already in it are skipped.",
)
@config_option
@click.option(
    "--concurrency", default=8, show_default=True, type=click.IntRange(min=1),
    help="Queries run at the same time (per actor with --backend ray).",
)  # fmt: skip
@click.option(
    "--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
    help="Run in this process, or on a pool of Ray actors (pip install 'moa-llm[ray]').",
)  # fmt: skip
@click.option(
    "--actors", default=2, show_default=True, type=click.IntRange(min=1),
    help="Ray actors in the pool (--backend ray).",
)  # fmt: skip
@click.option(
    "--ray-address", default=None, metavar="ADDRESS",
    help="Join this Ray cluster (e.g. ray://head:10001 or auto); default: start a local Ray.",
)  # fmt: skip
@click.option(
    "--max-cost", default=None, type=click.FloatRange(min=0), metavar="USD",
    help="Start no new query once the rows written cost this much.",
)  # fmt: skip
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--no-fsync", is_flag=True, help="Do not fsync each line (faster, less durable).")
def batch(
    input_path: str,
    output: str,
    config: Path | None,
    concurrency: int,
    backend: str,
    actors: int,
    ray_address: str | None,
    max_cost: float | None,
    no_progress: bool,
    no_fsync: bool,
) -> None:
    """Run every query of INPUT and write one result row per query to OUTPUT.

    INPUT is JSON Lines (each line a JSON string or {"id": ..., "query": ...}) or Parquet
    (a `query` column, optional `id`), a path or any URI pyarrow reads (s3://...). A failed
    query is written with its error; rerunning the same command resumes, skipping ids
    already written.
    """
    from moa.adapters._batch_io import open_sink, read_any
    from moa.adapters.batch import run_batch

    items = read_any(input_path)
    sink = open_sink(output, sync=not no_fsync)
    moa = build(config_source(config))
    console = stderr()
    progress = None if no_progress else _progress(console)
    spent = [0.0]

    def on_start(todo: int) -> None:
        if progress is not None:
            progress.start()
            progress.add_task("batch", total=todo, errors=0, spend=0.0)

    def on_item(record: Mapping[str, Any]) -> None:
        spent[0] += record.get("cost") or 0.0
        if progress is not None:
            failed = 1 if record.get("error") is not None else 0
            task = progress.tasks[0]
            progress.update(
                task.id, advance=1, errors=task.fields["errors"] + failed, spend=spent[0]
            )

    async def go() -> Any:
        try:
            return await run_batch(
                moa,
                items,
                sink,
                concurrency=concurrency,
                max_cost=max_cost,
                on_start=on_start,
                on_item=on_item,
            )
        finally:
            await moa.aclose()

    def go_ray() -> Any:
        from moa.adapters._batch_ray import run_batch_ray

        return run_batch_ray(
            moa.config,
            moa.settings,
            items,
            sink,
            actors=actors,
            concurrency=concurrency,
            address=ray_address,
            max_cost=max_cost,
            on_start=on_start,
            on_item=on_item,
        )

    try:
        summary = go_ray() if backend == "ray" else run(go(), sigterm=True)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (moa._runner.Terminated)
        message = f"interrupted; rerun the same command to resume ({output} keeps what was done)"
        fail(message, getattr(exc, "exit_code", 130))
    finally:
        if progress is not None:
            progress.stop()
    note = f" ({summary.errors} failed)" if summary.errors else ""
    skipped = f", {summary.skipped} already in {output}" if summary.skipped else ""
    unreadable = (
        f", {summary.unreadable_output_lines} unreadable line(s) in {output} ignored"
        if summary.unreadable_output_lines
        else ""
    )
    spend = f", spend ${summary.cost:.6f}" if summary.cost else ""
    console.print(f"batch: {summary.done} run{note}{skipped}{unreadable}{spend}")
    if summary.stopped_by_cost:
        left = summary.total - summary.skipped - summary.done
        console.print(
            f"batch: stopped at the spend cap: ${summary.cost:.6f} of --max-cost "
            f"${max_cost}; {left} queries not started (rerun with a higher cap to resume)"
        )
        raise click.exceptions.Exit(3)
    if summary.errors:
        raise click.exceptions.Exit(1)


def _progress(console: Console) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.2f}/s" if speed else "-/s", style="progress.data.speed")

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        Rate(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("errors: {task.fields[errors]}"),
        TextColumn("spend: ${task.fields[spend]:.4f}"),
        console=console,
    )
