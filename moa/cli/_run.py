"""`moa run`: answer one query, streamed when the mixture can stream."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from moa._runner import run as run_until_signal
from moa._unicode import json_text, scrub
from moa.cli._common import build, config_option, config_source, stderr
from moa.errors import MoAError

if TYPE_CHECKING:
    from moa.mixture import MixtureOfAgents
    from moa.result import LayerResult, MoAResult, NeuronResult

__all__ = ["run"]


@click.command()
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
    moa = build(config_source(config))
    stream = not (as_json or no_stream)
    try:
        result = run_until_signal(_answer(moa, query.strip(), stream=stream), sigterm=True)
    except MoAError as exc:
        layers = getattr(exc, "layers", None)
        if trace and layers:
            stderr().print(_trace_table(None, layers))
        raise
    if as_json:
        click.echo(json_text(result.model_dump(mode="json"), indent=2))
    elif not stream:
        click.echo(scrub(result.content))
    if trace:
        stderr().print(_trace_table(result, result.layers))


async def _answer(moa: MixtureOfAgents, query: str, *, stream: bool) -> MoAResult:
    from moa.adapters._streaming import events
    from moa.events import Completed, Token

    result: MoAResult | None = None
    printed = False
    try:
        async for event in events(moa, query):
            if isinstance(event, Token) and stream and event.text:
                sys.stdout.write(scrub(event.text))
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
    from rich.text import Text

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
        # model and provider text is shown as is, never read as rich markup ("[/]")
        status = Text("ok") if call.ok else Text(scrub(f"{call.error_type}: {call.error}"), "red")
        table.add_row(
            step,
            Text(scrub(call.model)),
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
