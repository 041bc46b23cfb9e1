"""`moa serve`: the OpenAI-compatible server (needs the `server` extra)."""

from __future__ import annotations

import ipaddress
import math
import os
from pathlib import Path

import click

from moa.cli._common import build, config_source, fail
from moa.config import Source

__all__ = ["serve"]

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise click.BadParameter("must be a finite number of seconds > 0")
    return value


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


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
@click.option(
    "--max-body-size", default=4 << 20, show_default=True, type=click.IntRange(min=1),
    metavar="BYTES", help="Largest request body; a larger one gets 413.",
)  # fmt: skip
@click.option(
    "--max-json-depth", default=32, show_default=True, type=click.IntRange(min=1),
    help="Deepest nesting of arrays/objects in a request body (400 beyond).",
)  # fmt: skip
@click.option(
    "--header-timeout", default=10.0, show_default=True, type=float, callback=_seconds,
    metavar="SECONDS", help="Time a client has to send its request line and headers.",
)  # fmt: skip
@click.option(
    "--body-timeout", default=30.0, show_default=True, type=float, callback=_seconds,
    metavar="SECONDS", help="Time a client has to send the whole body (408 after).",
)  # fmt: skip
@click.option(
    "--keep-alive-timeout", default=5, show_default=True, type=click.IntRange(min=0),
    metavar="SECONDS", help="How long an idle keep-alive connection stays open.",
)  # fmt: skip
@click.option(
    "--max-connections", default=1000, show_default=True, type=click.IntRange(min=1),
    help="Connections and requests at once; beyond it new ones get 503.",
)  # fmt: skip
def serve(
    configs: tuple[str, ...],
    host: str,
    port: int,
    max_body_size: int,
    max_json_depth: int,
    header_timeout: float,
    body_timeout: float,
    keep_alive_timeout: int,
    max_connections: int,
) -> None:
    """Serve mixtures over an OpenAI-compatible API (/v1/chat/completions, /v1/models).

    Set MOA_SERVER_API_KEY to require `Authorization: Bearer <key>` on /v1 routes. The
    limits protect the server from clients that send too much or too slowly.
    """
    try:
        import uvicorn

        from moa.adapters.server import ServerLimits, create_app, uvicorn_options
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
    for name, mixture in mixtures.items():
        mixture.name = name  # gen_ai.agent.name of its spans
    api_key = os.environ.get("MOA_SERVER_API_KEY") or None
    limits = ServerLimits(
        max_body_bytes=max_body_size,
        max_json_depth=max_json_depth,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        keep_alive_timeout=keep_alive_timeout,
        max_connections=max_connections,
    )
    app = create_app(mixtures, api_key=api_key, limits=limits)
    auth = "bearer token required" if api_key else "no auth"
    click.echo(f"moa: serving {', '.join(mixtures)} on http://{host}:{port}/v1 ({auth})", err=True)
    if api_key is None and not _is_loopback(host):
        click.secho(
            f"WARNING: moa serve listens on {host}, beyond this machine, WITHOUT AUTHENTICATION: "
            "anyone who can reach the port can spend your provider credits. Set "
            "MOA_SERVER_API_KEY to require a bearer token, or serve on 127.0.0.1.",
            err=True,
            fg="red",
            bold=True,
        )
    uvicorn.run(app, host=host, port=port, log_level="info", **uvicorn_options(limits))
