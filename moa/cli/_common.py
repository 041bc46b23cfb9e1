"""Shared pieces of the `moa` commands: error handling, the `-c` option, building mixtures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from pydantic import ValidationError

from moa.config import Source
from moa.errors import ConfigError, MoAError, PluginError, QueryError

if TYPE_CHECKING:
    from rich.console import Console

    from moa.mixture import MixtureOfAgents

__all__ = ["USAGE_ERRORS", "Group", "build", "config_option", "config_source", "fail", "stderr"]

USAGE_ERRORS = (ConfigError, PluginError, QueryError)


def stderr() -> Console:
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(code)


class Group(click.Group):
    """Turns expected errors into one line on stderr and an exit code, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from moa.adapters._wire import describe_error
        from moa.adapters.batch import BatchInputError
        from moa.eval.data import EvalDataError

        try:
            return super().invoke(ctx)
        except (*USAGE_ERRORS, BatchInputError, EvalDataError) as exc:
            fail(str(exc), 2)
        except MoAError as exc:
            fail(describe_error(exc), 1)
        except ValidationError as exc:  # Settings from the environment
            fail(f"invalid settings: {exc}", 2)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (moa._runner.Terminated)
            fail("interrupted", getattr(exc, "exit_code", 130))


config_option = click.option(
    "-c",
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML config of the mixture.",
)


def config_source(config: Path | None) -> Source:
    """The `-c` file, else the zero-config default (a message about it goes to stderr)."""
    if config is not None:
        return config
    try:
        from moa.presets import resolve_default  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name != "moa.presets":
            raise  # moa.presets is there but broken: show it
        fail("no config given: pass -c CONFIG", 2)
    try:
        source, message = resolve_default()
    except MoAError as exc:
        fail(f"no config given and no default mixture available: {exc}", 2)
    if message:
        click.echo(message, err=True)
    return source  # type: ignore[no-any-return,unused-ignore]


def build(source: Source) -> MixtureOfAgents:
    from moa.mixture import MixtureOfAgents

    return MixtureOfAgents.from_config(source)
