"""Shared pieces of the benchmarks: the fake provider in its own process, two benchmark-only
neuron types, mixture shapes and percentiles.

The fake provider runs in a child process so that its event loop never competes with the
code under test for the GIL. A model name says how the server answers:
`50ms/anything` after 50 ms, `hang/anything` never (until the client goes away).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")

from pydantic import SecretStr

from moa import Generation, Neuron, NeuronConfig, NeuronRequest, Settings, hookimpl
from moa.plugins import register_plugin

_SERVER = """
import re, sys
from moa.testing import FakeProvider, Reply

def respond(request):
    prefix = (request.model or "").split("/", 1)[0]
    if prefix == "hang":
        return Reply(fault="hang")
    match = re.fullmatch(r"(\\d+(?:\\.\\d+)?)ms", prefix)
    return Reply(latency=float(match.group(1)) / 1000 if match else 0.0, content="ok")

with FakeProvider() as provider:
    provider.respond_with(None, respond)
    print(provider.base_url, flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin
"""


@contextmanager
def fake_provider_process() -> Iterator[str]:
    """Start the fake provider in a child process; yield its base URL."""
    child = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        base_url = child.stdout.readline().strip()
        if not base_url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"fake provider did not start: {base_url!r}")
        yield base_url
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)


def settings_for(base_url: str) -> Settings:
    return Settings(
        provider_api_key=SecretStr("sk-bench-not-a-real-key"),
        base_url=base_url,
        request_timeout=30.0,
        max_retries=0,
    )


class HttpNeuron(Neuron):
    """One raw httpx POST per call over a shared connection pool: the floor a neuron can
    reach, used to tell moa's own orchestration cost from litellm's per-call cost."""

    class Config(NeuronConfig):
        type: Literal["bench-http"] = "bench-http"
        model: str

    _clients: dict[int, Any] = {}  # noqa: RUF012 - one pool per event loop

    async def generate(self, request: NeuronRequest) -> Generation:
        import asyncio

        import httpx

        loop_id = id(asyncio.get_running_loop())
        client = self._clients.get(loop_id)
        if client is None:
            client = self._clients[loop_id] = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
                timeout=self.timeout,
            )
        assert isinstance(self.config, HttpNeuron.Config)
        response = await client.post(
            f"{self.settings.base_url}/chat/completions",
            json={"model": self.config.model, "messages": [dict(m) for m in request.messages]},
        )
        return Generation(text=response.json()["choices"][0]["message"]["content"])


class NullNeuron(Neuron):
    """Answers at once without I/O: every microsecond of `process()` is moa's own."""

    class Config(NeuronConfig):
        type: Literal["bench-null"] = "bench-null"
        model: str

    async def generate(self, request: NeuronRequest) -> Generation:
        return Generation(text="ok")


class _Plugin:
    @hookimpl
    def register_neurons(self, register: Any) -> None:
        register("bench-http", HttpNeuron)
        register("bench-null", NullNeuron)


register_plugin(_Plugin(), name="moa-benchmarks")


def shape(
    layers: int, width: int, *, kind: str, latency_ms: float, agg_latency_ms: float | None = None
) -> dict[str, Any]:
    """A mixture config: `layers` proposal layers of `width` neurons and an aggregator."""
    agg_ms = latency_ms if agg_latency_ms is None else agg_latency_ms

    def neuron(name: str, ms: float) -> dict[str, Any]:
        return {"type": kind, "model": f"{ms:g}ms/{name}"}

    return {
        "proposal_layers": [
            {"neurons": [neuron(f"L{i}N{j}", latency_ms) for j in range(width)]}
            for i in range(layers)
        ],
        "aggregation_layer": neuron("AGG", agg_ms),
    }


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, int(q) - 1))]


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}"
