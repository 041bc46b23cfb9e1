"""The `moa` command (click, as simonw/llm does; rich for tables and progress).

    moa run "question" -c config.yaml [--json] [--trace]
    moa validate config.yaml
    moa schema
    moa plugins
    moa batch in.jsonl -o out.jsonl -c config.yaml --concurrency 8
    moa eval data.jsonl -c config.yaml --scorer number [--json] [--report eval.html]
    moa serve -c config.yaml --port 8000

Exit codes: 0 success, 1 the run failed (every neuron of a layer, or the aggregator), 2 a
usage or config error, 130 interrupted by Ctrl-C, 143 by SIGTERM (`run` and `batch`).
Expected errors print one message, never a traceback. Answers go to stdout; traces, progress
and messages to stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from moa.cli._batch import batch
from moa.cli._common import Group
from moa.cli._eval import eval_command
from moa.cli._inspect import plugins, schema, validate
from moa.cli._run import run
from moa.cli._serve import serve

__all__ = ["cli", "main"]


@click.group(cls=Group)
@click.version_option(package_name="moa-llm", prog_name="moa")
def cli() -> None:
    """Mixture of Agents over LLMs: run, validate and serve mixtures."""


for _command in (run, validate, schema, plugins, batch, eval_command, serve):
    cli.add_command(_command)


INTERRUPTED = frozenset({130, 143})  # Ctrl-C, SIGTERM


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point.

    An interrupted command exits at once: its work is cancelled and its output written by
    then, so tearing down the interpreter (seconds with litellm loaded, on a busy machine)
    and any worker thread still busy are skipped."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="moa")
    except SystemExit as exc:
        if exc.code in INTERRUPTED:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.code)
        raise
