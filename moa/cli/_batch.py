"""`moa batch`: run a JSON Lines file of queries, resumably, with a progress bar."""

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
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON Lines file results are appended to; ids already in it are skipped.",
)
@config_option
@click.option(
    "--concurrency", default=8, show_default=True, type=click.IntRange(min=1),
    help="Queries run at the same time.",
)  # fmt: skip
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--no-fsync", is_flag=True, help="Do not fsync each line (faster, less durable).")
@click.option(
    "--report",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write an HTML report of OUTPUT (latency and cost distributions, failures by kind, "
    "the slowest queries) to this file.",
)
def batch(
    input_path: Path,
    output: Path,
    config: Path | None,
    concurrency: int,
    no_progress: bool,
    no_fsync: bool,
    report: Path | None,
) -> None:
    """Run every query of INPUT (JSON Lines) and append one result line per query to OUTPUT.

    Each input line is a JSON string or {"id": ..., "query": ...}. A failed query is written
    with its error; rerunning the same command resumes, skipping ids already written.
    """
    from moa.adapters.batch import read_items, run_batch

    items = read_items(input_path)
    moa = build(config_source(config))
    console = stderr()
    progress = None if no_progress else _progress(console)

    def on_start(todo: int) -> None:
        if progress is not None:
            progress.start()
            progress.add_task("batch", total=todo, errors=0)

    def on_item(record: Mapping[str, Any]) -> None:
        if progress is not None:
            failed = 1 if record.get("error") is not None else 0
            task = progress.tasks[0]
            progress.update(task.id, advance=1, errors=task.fields["errors"] + failed)

    async def go() -> Any:
        try:
            return await run_batch(
                moa,
                items,
                output,
                concurrency=concurrency,
                sync=not no_fsync,
                on_start=on_start,
                on_item=on_item,
            )
        finally:
            await moa.aclose()

    try:
        summary = run(go(), sigterm=True)
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
    console.print(f"batch: {summary.done} run{note}{skipped}{unreadable}")
    if report is not None:
        from moa.report import write_batch_report

        write_batch_report(output, report)
        console.print(f"batch: report of every query in {output} written to {report}")
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
        console=console,
    )
