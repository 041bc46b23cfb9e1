"""The `moa` command (click, as simonw/llm does; rich for tables and progress).

    moa run "question" -c config.yaml [--json] [--trace]
    moa validate config.yaml
    moa schema
    moa plugins
    moa batch in.jsonl -o out.jsonl -c config.yaml --concurrency 8
    moa serve -c config.yaml --port 8000

Exit codes: 0 success, 1 the run failed (every neuron of a layer, or the aggregator), 2 a
usage or config error. Expected errors print one message, never a traceback. Answers go to
stdout; traces, progress and messages to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from pydantic import ValidationError

from moa.config import Source, json_schema, load_config
from moa.errors import ConfigError, MoAError, PluginError, QueryError

if TYPE_CHECKING:
    from rich.console import Console

    from moa.mixture import MixtureOfAgents
    from moa.result import LayerResult, MoAResult, NeuronResult

__all__ = ["cli", "main"]

USAGE_ERRORS = (ConfigError, PluginError, QueryError)


def _stderr() -> Console:
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(code)


class _Group(click.Group):
    """Turns expected errors into one line on stderr and an exit code, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from moa._wire import describe_error
        from moa.batch import BatchInputError

        try:
            return super().invoke(ctx)
        except (*USAGE_ERRORS, BatchInputError) as exc:
            _fail(str(exc), 2)
        except MoAError as exc:
            _fail(describe_error(exc), 1)
        except ValidationError as exc:  # Settings from the environment
            _fail(f"invalid settings: {exc}", 2)


@click.group(cls=_Group)
@click.version_option(package_name="moa-llm", prog_name="moa")
def cli() -> None:
    """Mixture of Agents over LLMs: run, validate and serve mixtures."""


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="moa")


config_option = click.option(
    "-c",
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML config of the mixture.",
)


def _config_source(config: Path | None) -> Source:
    """The `-c` file, else the zero-config default (a message about it goes to stderr)."""
    if config is not None:
        return config
    try:
        from moa.presets import resolve_default  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name != "moa.presets":
            raise  # moa.presets is there but broken: show it
        _fail("no config given: pass -c CONFIG", 2)
    try:
        source, message = resolve_default()
    except MoAError as exc:
        _fail(f"no config given and no default mixture available: {exc}", 2)
    if message:
        click.echo(message, err=True)
    return source  # type: ignore[no-any-return,unused-ignore]


def _build(source: Source) -> MixtureOfAgents:
    from moa.mixture import MixtureOfAgents

    return MixtureOfAgents.from_config(source)


# --------------------------------------------------------------------------- run


@cli.command()
@click.argument("query", required=False)
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option("--trace", is_flag=True, help="Show each call: seconds, tokens, cost, errors.")
@click.option("--no-stream", is_flag=True, help="Print the answer only when it is complete.")
def run(
    query: str | None, config: Path | None, as_json: bool, trace: bool, no_stream: bool
) -> None:
    """Answer QUERY with a mixture (reads the query from stdin when QUERY is omitted).

    \b
    moa run "Why is the sky blue?" -c moa_config.yaml
    echo "Why is the sky blue?" | moa run -c moa_config.yaml --trace
    """
    if query is None:
        if sys.stdin.isatty():
            raise click.UsageError("give a QUERY argument or pipe the query to stdin")
        query = sys.stdin.read()
    if not query.strip():
        raise click.UsageError("the query is empty")
    moa = _build(_config_source(config))
    stream = not (as_json or no_stream)
    try:
        result = asyncio.run(_answer(moa, query.strip(), stream=stream))
    except MoAError as exc:
        layers = getattr(exc, "layers", None)
        if trace and layers:
            _stderr().print(_trace_table(None, layers))
        raise
    if as_json:
        click.echo(result.model_dump_json(indent=2))
    elif not stream:
        click.echo(result.content)
    if trace:
        _stderr().print(_trace_table(result, result.layers))


async def _answer(moa: MixtureOfAgents, query: str, *, stream: bool) -> MoAResult:
    from moa._streaming import Completed, Token, events

    result: MoAResult | None = None
    printed = False
    try:
        async for event in events(moa, query):
            if isinstance(event, Token) and stream and event.text:
                sys.stdout.write(event.text)
                sys.stdout.flush()
                printed = True
            elif isinstance(event, Completed):
                result = event.result
    finally:
        if printed:
            sys.stdout.write("\n")
            sys.stdout.flush()
        await moa.aclose()
    if result is None:
        raise MoAError("the mixture ended without a result")
    return result


def _trace_table(result: MoAResult | None, layers: Sequence[LayerResult]) -> Any:
    from rich.table import Table

    table = Table(title="moa trace", title_justify="left")
    for name, justify in [
        ("step", "left"),
        ("neuron", "left"),
        ("seconds", "right"),
        ("prompt tok", "right"),
        ("completion tok", "right"),
        ("cost $", "right"),
        ("status", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]

    def row(step: str, call: NeuronResult) -> None:
        usage = call.usage
        status = "ok" if call.ok else f"[red]{call.error_type}: {call.error}[/red]"
        table.add_row(
            step,
            call.model,
            f"{call.seconds:.2f}",
            str(usage.prompt_tokens) if usage else "-",
            str(usage.completion_tokens) if usage else "-",
            f"{call.cost:.6f}" if call.cost is not None else "-",
            status,
        )

    if result is not None and result.annotator is not None:
        row("annotator", result.annotator)
    for layer in layers:
        for call in layer.neurons:
            row(f"layer {layer.index + 1}", call)
    if result is not None:
        row("aggregator", result.aggregator)
        cost = f"{result.cost:.6f}" if result.cost is not None else "-"
        table.add_section()
        table.add_row(
            "total",
            "",
            f"{result.total_completion_time:.2f}",
            str(result.usage.prompt_tokens),
            str(result.usage.completion_tokens),
            cost,
            "",
        )
    return table


# ------------------------------------------------------------------ validate, schema, plugins


@cli.command()
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--check-keys", is_flag=True, help="Also check that every API key the mixture needs is set."
)
def validate(configs: tuple[Path, ...], check_keys: bool) -> None:
    """Check CONFIGS without calling any model (exit 2 and the reasons when one is invalid)."""
    failed = False
    for path in configs:
        try:
            config = load_config(path, is_file_path=True)
            if check_keys:
                from moa.mixture import MixtureOfAgents

                MixtureOfAgents(config)
        except (ConfigError, PluginError) as exc:
            click.echo(f"Error: {exc}", err=True)
            failed = True
            continue
        neurons = sum(len(layer.neurons) for layer in config.proposal_layers)
        click.echo(
            f"{path}: valid ({len(config.proposal_layers)} proposal layer(s), "
            f"{neurons} neuron(s){', annotator' if config.use_annotator else ''}, aggregator)"
        )
    if failed:
        raise click.exceptions.Exit(2)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of a config file, including every installed neuron type."""
    click.echo(json.dumps(json_schema(), indent=2))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List installed plugins and the neuron types they add."""
    from moa.plugins import plugin_infos

    rows: list[dict[str, Any]] = [
        {
            "name": info.name,
            "version": info.version,
            "source": "built-in" if info.builtin else (info.distribution or "registered in code"),
            "types": list(info.neuron_types),
        }
        for info in plugin_infos()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "version", "source", "neuron types")
    for r in rows:
        table.add_row(r["name"], r["version"] or "-", r["source"], ", ".join(r["types"]) or "-")
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    console.print(table)


# --------------------------------------------------------------------------- batch


@cli.command()
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
def batch(
    input_path: Path,
    output: Path,
    config: Path | None,
    concurrency: int,
    no_progress: bool,
    no_fsync: bool,
) -> None:
    """Run every query of INPUT (JSON Lines) and append one result line per query to OUTPUT.

    Each input line is a JSON string or {"id": ..., "query": ...}. A failed query is written
    with its error; rerunning the same command resumes, skipping ids already written.
    """
    from moa.batch import read_items, run_batch

    items = read_items(input_path)
    moa = _build(_config_source(config))
    console = _stderr()
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
        summary = asyncio.run(go())
    except KeyboardInterrupt:
        _fail(f"interrupted; rerun the same command to resume ({output} keeps what was done)", 130)
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


# --------------------------------------------------------------------------- serve


@cli.command()
@click.option(
    "-c",
    "--config",
    "configs",
    multiple=True,
    metavar="[NAME=]PATH",
    help="A mixture to serve, under NAME (default: the file's stem). Repeatable.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
def serve(configs: tuple[str, ...], host: str, port: int) -> None:
    """Serve mixtures over an OpenAI-compatible API (/v1/chat/completions, /v1/models).

    Set MOA_SERVER_API_KEY to require `Authorization: Bearer <key>` on /v1 routes.
    """
    try:
        import uvicorn

        from moa.server import create_app
    except ImportError as exc:
        _fail(f"moa serve needs the server extra ({exc.name} is missing): "
              "pip install 'moa-llm[server]'", 2)  # fmt: skip
    sources: dict[str, Source] = {}
    for spec in configs:
        name, _, path = spec.rpartition("=")
        name = name or Path(path).stem
        if name in sources:
            raise click.UsageError(f"two mixtures are named {name!r}; use -c NAME=PATH")
        sources[name] = Path(path)
    if not sources:
        sources["moa"] = _config_source(None)
    mixtures = {name: _build(source) for name, source in sources.items()}
    api_key = os.environ.get("MOA_SERVER_API_KEY") or None
    app = create_app(mixtures, api_key=api_key)
    auth = "bearer token required" if api_key else "no auth"
    click.echo(f"moa: serving {', '.join(mixtures)} on http://{host}:{port}/v1 ({auth})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


if __name__ == "__main__":
    main()
