"""`moa validate`, `moa schema` and `moa plugins`: look at configs and installs, call nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from moa.config import json_schema, load_config
from moa.errors import ConfigError, PluginError

__all__ = ["plugins", "schema", "validate"]


@click.command()
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--check-keys", is_flag=True, help="Also check that every API key the mixture needs is set."
)
def validate(configs: tuple[Path, ...], check_keys: bool) -> None:
    """Check CONFIGS without calling any model: the schema, then every neuron is built as a
    run builds it (exit 2 and the reasons when one is invalid)."""
    from moa.validation import check_config

    failed = False
    for path in configs:
        try:
            config = load_config(path, is_file_path=True)  # its errors name the file
            problems = [f"{path}: {p}" for p in check_config(config, check_keys=check_keys)]
        except (ConfigError, PluginError) as exc:
            problems = [str(exc)]
        for problem in problems:
            click.echo(f"Error: {problem}", err=True)
        if problems:
            failed = True
            continue
        neurons = sum(len(layer.neurons) for layer in config.proposal_layers)
        click.echo(
            f"{path}: valid ({len(config.proposal_layers)} proposal layer(s), "
            f"{neurons} neuron(s){', annotator' if config.use_annotator else ''}, aggregator)"
        )
    if failed:
        raise click.exceptions.Exit(2)


@click.command()
def schema() -> None:
    """Print the JSON Schema of a config file, including every installed neuron type."""
    click.echo(json.dumps(json_schema(), indent=2))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List installed plugins and the neuron types they add (disabled: installed, but left
    out by MOA_LOAD_PLUGINS)."""
    from moa.plugins import plugin_infos

    rows: list[dict[str, Any]] = [
        {
            "name": info.name,
            "version": info.version,
            "source": "built-in" if info.builtin else (info.distribution or "registered in code"),
            "types": list(info.neuron_types),
            "enabled": info.enabled,
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
        types = ", ".join(r["types"]) or "-"
        if not r["enabled"]:
            types = "disabled (not in MOA_LOAD_PLUGINS)"
        table.add_row(r["name"], r["version"] or "-", r["source"], types)
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    console.print(table)
