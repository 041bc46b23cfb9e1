"""`moa serve`: the OpenAI-compatible server (needs the `server` extra)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from moa.cli._common import build, config_source, fail
from moa.config import Source

__all__ = ["serve"]


@click.command()
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

        from moa.adapters.server import create_app
    except ImportError as exc:
        fail(f"moa serve needs the server extra ({exc.name} is missing): "
              "pip install 'moa-llm[server]'", 2)  # fmt: skip
    sources: dict[str, Source] = {}
    for spec in configs:
        name, _, path = spec.rpartition("=")
        name = name or Path(path).stem
        if name in sources:
            raise click.UsageError(f"two mixtures are named {name!r}; use -c NAME=PATH")
        sources[name] = Path(path)
    if not sources:
        sources["moa"] = config_source(None)
    mixtures = {name: build(source) for name, source in sources.items()}
    api_key = os.environ.get("MOA_SERVER_API_KEY") or None
    app = create_app(mixtures, api_key=api_key)
    auth = "bearer token required" if api_key else "no auth"
    click.echo(f"moa: serving {', '.join(mixtures)} on http://{host}:{port}/v1 ({auth})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
