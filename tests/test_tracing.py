"""OpenTelemetry spans (moa.tracing) recorded by the SDK's in-memory exporter: the tree of a
run, GenAI attributes, retries and fallbacks, tokens adding up to `result.usage`, opt-in
content, no key in any attribute, context propagation, and nothing imported when off."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import CANARY_KEY, ROOT
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from moa import AllNeuronsFailed, MixtureOfAgents, Settings
from moa import tracing as moa_tracing
from moa.testing import FakeProvider, Reply

Build = Callable[..., MixtureOfAgents]

FAST_RETRY = {"max_retries": 2, "backoff_base": 0, "backoff_max": 0}

TWO_LAYERS: dict[str, Any] = {
    "use_annotator": True,
    "annotator": {"model": "m/ANN", "temperature": 0.2},
    "retry": FAST_RETRY,
    "proposal_layers": [
        {
            "neurons": [
                {"model": "m/A", "max_tokens": 64},
                {"model": "m/B", "fallbacks": ["m/BACKUP"]},
            ]
        },
        {"neurons": [{"model": "m/C"}, {"model": "m/D"}]},
    ],
    "aggregation_layer": {"model": "m/AGG"},
}


@pytest.fixture(scope="session")
def _exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process, as an application does
    return exporter


@pytest.fixture
def spans(_exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    moa_tracing.reset()
    _exporter.clear()
    yield _exporter
    _exporter.clear()


def children(all_spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    found = [
        s for s in all_spans if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]
    return sorted(found, key=lambda s: s.start_time or 0)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def only(all_spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in all_spans if s.name == name]
    assert len(found) == 1, [s.name for s in all_spans]
    return found[0]


async def test_span_tree_of_two_layers_with_annotator_a_retry_and_a_fallback(
    fake: FakeProvider, build: Build, spans: InMemorySpanExporter
) -> None:
    fake.script("m/A", Reply(status=503), Reply(content="A after a retry", usage=(11, 7)))
    fake.script("m/B", Reply(status=401))  # never retried: the fallback answers
    result = await build(TWO_LAYERS).process("Why is the sky blue?")
    finished = spans.get_finished_spans()

    root = only(finished, "invoke_agent moa")
    assert root.parent is None and root.kind is SpanKind.INTERNAL
    assert attrs(root)["gen_ai.operation.name"] == "invoke_agent"
    assert attrs(root)["gen_ai.agent.name"] == "moa"
    layers = children(finished, root)
    assert [s.name for s in layers] == [
        "moa.layer annotator",
        "moa.layer proposal_layers[0]",
        "moa.layer proposal_layers[1]",
        "moa.layer aggregation_layer",
    ]
    assert [attrs(s).get("moa.layer.index") for s in layers] == [None, 0, 1, 2]
    assert [s.name for s in children(finished, layers[0])] == ["chat m/ANN"]
    first = children(finished, layers[1])
    assert sorted(s.name for s in first) == ["chat m/A", "chat m/B", "chat m/BACKUP"]
    assert sorted(s.name for s in children(finished, layers[2])) == ["chat m/C", "chat m/D"]
    assert [s.name for s in children(finished, layers[3])] == ["chat m/AGG"]

    # the retried call: one span covering both attempts, the failed one as an event
    a = only(finished, "chat m/A")
    assert a.kind is SpanKind.CLIENT and a.status.status_code is StatusCode.UNSET
    assert [e.name for e in a.events] == ["moa.attempt.failed"]
    event = dict(a.events[0].attributes or {})
    assert event == {
        "moa.attempt": 1,
        "error.type": "ProviderError",
        "http.response.status_code": 503,
    }
    assert attrs(a)["moa.attempts"] == 2
    assert attrs(a)["gen_ai.usage.input_tokens"] == 11
    assert attrs(a)["gen_ai.usage.output_tokens"] == 7
    assert attrs(a)["gen_ai.request.max_tokens"] == 64
    assert attrs(a)["gen_ai.request.model"] == "m/A"
    assert attrs(a)["gen_ai.operation.name"] == "chat"
    assert attrs(a)["gen_ai.provider.name"] == "openai"
    assert attrs(a)["server.address"] == "127.0.0.1" and attrs(a)["server.port"] == fake.port
    assert attrs(a)["moa.neuron.path"] == "proposal_layers[0].neurons[0]"

    # the fallback: the neuron's own model failed for good, its fallback answered
    b, backup = only(finished, "chat m/B"), only(finished, "chat m/BACKUP")
    assert b.status.status_code is StatusCode.ERROR
    assert attrs(b)["error.type"] == "AuthenticationError"
    assert attrs(b)["http.response.status_code"] == 401
    assert "gen_ai.usage.input_tokens" not in attrs(b)
    assert attrs(backup)["moa.fallback"] is True
    assert attrs(backup)["moa.fallback_of"] == "proposal_layers[0].neurons[1]"
    assert attrs(backup)["gen_ai.usage.output_tokens"] > 0
    assert result.layers[0].neurons[1].fallback == "m/BACKUP"

    # layer attributes: survivors, what was dropped; the aggregator: what it was shown
    assert attrs(layers[1])["moa.layer.survivors"] == 2
    assert attrs(layers[3])["moa.aggregation.shown"] == (
        "proposal_layers[1].neurons[0]",
        "proposal_layers[1].neurons[1]",
    )

    # tokens: the chat spans add up to result.usage, and the root carries the sum
    chats = [s for s in finished if s.name.startswith("chat ")]
    assert len(chats) == 7
    assert sum(attrs(s).get("gen_ai.usage.input_tokens", 0) for s in chats) == (
        result.usage.prompt_tokens
    )
    assert sum(attrs(s).get("gen_ai.usage.output_tokens", 0) for s in chats) == (
        result.usage.completion_tokens
    )
    assert attrs(root)["gen_ai.usage.input_tokens"] == result.usage.prompt_tokens
    assert attrs(root)["gen_ai.usage.output_tokens"] == result.usage.completion_tokens
    # every span of the run is in one trace, and nothing holds prompt or answer text
    assert {s.context.trace_id for s in finished} == {root.context.trace_id}
    assert not any(
        e.name == "gen_ai.client.inference.operation.details" for s in chats for e in s.events
    )
    assert "sky" not in _everything(finished)


async def test_streamed_run_has_the_same_tree(
    fake: FakeProvider, build: Build, spans: InMemorySpanExporter
) -> None:
    events = [e async for e in build(TWO_LAYERS).stream("q")]
    result = events[-1].result  # type: ignore[union-attr]
    finished = spans.get_finished_spans()
    root = only(finished, "invoke_agent moa")
    assert attrs(root)["moa.stream"] is True
    agg_layer = only(finished, "moa.layer aggregation_layer")
    assert [s.name for s in children(finished, agg_layer)] == ["chat m/AGG"]
    for layer in ("proposal_layers[0]", "proposal_layers[1]"):
        assert len(children(finished, only(finished, f"moa.layer {layer}"))) == 2
    chats = [s for s in finished if s.name.startswith("chat ")]
    assert sum(attrs(s).get("gen_ai.usage.output_tokens", 0) for s in chats) == (
        result.usage.completion_tokens
    )


async def test_a_failed_layer_marks_its_span_and_the_root(
    fake: FakeProvider, build: Build, spans: InMemorySpanExporter
) -> None:
    config = {
        "proposal_layers": [{"neurons": [{"model": "m/A"}, {"model": "m/B"}]}],
        "aggregation_layer": {"model": "m/AGG"},
    }
    fake.script("m/A", Reply(status=400))
    fake.script("m/B", Reply(status=404))
    with pytest.raises(AllNeuronsFailed):
        await build(config).process("q")
    finished = spans.get_finished_spans()
    root, layer = only(finished, "invoke_agent moa"), only(finished, "moa.layer proposal_layers[0]")
    assert root.status.status_code is StatusCode.ERROR
    assert attrs(root)["error.type"] == "AllNeuronsFailed"
    assert attrs(layer)["error.type"] == "AllNeuronsFailed"
    assert attrs(layer)["moa.layer.survivors"] == 0
    assert set(attrs(layer)["moa.layer.failed"]) == {
        "proposal_layers[0].neurons[0]",
        "proposal_layers[0].neurons[1]",
    }
    assert not any(s.name == "moa.layer aggregation_layer" for s in finished)


async def test_a_straggler_cut_off_by_the_deadline_is_a_cancelled_span(
    fake: FakeProvider, build: Build, spans: InMemorySpanExporter
) -> None:
    config = {
        "proposal_layers": [{"neurons": [{"model": "m/A"}, {"model": "m/SLOW"}], "deadline": 0.2}],
        "aggregation_layer": {"model": "m/AGG"},
    }
    fake.script("m/SLOW", Reply(fault="hang"))
    result = await build(config).process("q")
    assert result.partial
    finished = spans.get_finished_spans()
    slow = only(finished, "chat m/SLOW")
    assert attrs(slow)["moa.cancelled"] is True and attrs(slow)["error.type"] == "cancelled"
    layer = only(finished, "moa.layer proposal_layers[0]")
    assert attrs(layer)["moa.layer.timed_out"] == ("proposal_layers[0].neurons[1]",)


async def test_content_is_recorded_only_when_asked_and_no_attribute_holds_the_key(
    fake: FakeProvider, build: Build, spans: InMemorySpanExporter
) -> None:
    fake.script("m/A", Reply(status=500, error_message=f"upstream says key={CANARY_KEY}"), Reply())
    fake.script("m/AGG", Reply(content=f"the answer, not {CANARY_KEY}"[:18]))
    config = {
        "retry": FAST_RETRY,
        "proposal_layers": [{"neurons": [{"model": "m/A", "prompt": "SYS-A"}, {"model": "m/B"}]}],
        "aggregation_layer": {"model": "m/AGG"},
    }
    result = await build(config, trace_content=True).process("What is 2+2?")
    finished = spans.get_finished_spans()
    a = only(finished, "chat m/A")
    details = [e for e in a.events if e.name == "gen_ai.client.inference.operation.details"]
    assert len(details) == 1
    event = dict(details[0].attributes or {})
    assert json.loads(event["gen_ai.system_instructions"]) == [{"type": "text", "content": "SYS-A"}]
    assert json.loads(event["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "What is 2+2?"}]}
    ]
    assert json.loads(event["gen_ai.output.messages"])[0]["parts"][0]["content"] == (
        result.layers[0].neurons[0].text
    )
    assert CANARY_KEY not in _everything(finished)


async def test_the_callers_active_span_is_the_parent(
    fake: FakeProvider, build: Build, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("my-app")
    with tracer.start_as_current_span("handle request") as outer:
        await build(TWO_LAYERS).process("q")
    root = only(spans.get_finished_spans(), "invoke_agent moa")
    assert root.parent is not None and root.parent.span_id == outer.get_span_context().span_id


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_the_server_continues_a_received_traceparent(
    fake: FakeProvider, moa_settings: Settings, spans: InMemorySpanExporter, stream: bool
) -> None:
    import httpx

    from moa.adapters.server import create_app
    from tests.test_server import ServerThread

    mixture = MixtureOfAgents.from_config(TWO_LAYERS, settings=moa_settings)
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    body = {"model": "mix", "messages": [{"role": "user", "content": "q"}], "stream": stream}
    with ServerThread(create_app({"mix": mixture})) as server:
        reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)
        assert reply.status_code == 200
        untraced = httpx.post(f"{server.url}/v1/chat/completions", json=body)
        assert untraced.status_code == 200
    roots = [s for s in spans.get_finished_spans() if s.name == "invoke_agent moa"]
    assert len(roots) == 2
    continued = [r for r in roots if r.parent is not None]
    assert len(continued) == 1 and continued[0].parent is not None
    assert continued[0].parent.is_remote and continued[0].parent.span_id == int(parent_id, 16)
    assert format(continued[0].context.trace_id, "032x") == trace_id
    in_trace = [s for s in spans.get_finished_spans() if s.context.trace_id == int(trace_id, 16)]
    assert len(in_trace) == 1 + 4 + 6  # root, 4 layers, one call per neuron


async def test_tracing_off_records_nothing(
    fake: FakeProvider, build: Build, spans: InMemorySpanExporter
) -> None:
    await build(TWO_LAYERS, tracing="off").process("q")
    assert spans.get_finished_spans() == ()


def _everything(finished: Sequence[ReadableSpan]) -> str:
    """Every name, attribute and event of `finished` as one string."""
    parts: list[str] = []
    for span in finished:
        parts.append(span.name)
        parts.append(repr(dict(span.attributes or {})))
        parts.extend(f"{e.name} {dict(e.attributes or {})!r}" for e in span.events)
        parts.append(repr(span.status.description))
    return "\n".join(parts)


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_import_moa_and_a_run_with_tracing_off_import_no_opentelemetry(
    fake: FakeProvider,
) -> None:
    done = _run_python(
        f"""
        import asyncio, sys
        import moa
        assert not any(m.startswith("opentelemetry") for m in sys.modules), "import moa"
        from moa import Settings, create_moa_from_config
        settings = Settings(base_url={fake.base_url!r}, tracing="off")
        mixture = create_moa_from_config(
            {{"proposal_layers": [{{"neurons": [{{"model": "m/A"}}]}}],
              "aggregation_layer": {{"model": "m/AGG"}}}}, settings=settings)
        result = asyncio.run(mixture.process("q"))
        assert result.content
        leaked = [m for m in sys.modules if m.startswith("opentelemetry")]
        assert not leaked, leaked
        # installed, on, but no SDK configured: one no-op root span, no layer or call spans
        from moa import tracing
        on = create_moa_from_config(mixture.config, settings=Settings(base_url={fake.base_url!r}))
        assert tracing.start_run(on, stream=False) is tracing.NO_RUN
        assert asyncio.run(on.process("q")).content
        print("ok")
        """,
        LITELLM_OFFLINE_MODE="true",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_without_opentelemetry_installed_auto_is_off_and_on_says_what_to_install() -> None:
    done = _run_python(
        """
        import sys
        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Hide())
        from moa import ConfigError, Settings
        from moa.tracing import tracing_enabled
        assert not tracing_enabled(Settings(tracing="auto"))
        try:
            tracing_enabled(Settings(tracing="on"))
        except ConfigError as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'moa-llm[otel]'" in done.stdout and "auto, on, off" in done.stdout


def test_settings_read_tracing_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOA_TRACING", "off")
    monkeypatch.setenv("MOA_TRACE_CONTENT", "true")
    settings = Settings()
    assert settings.tracing == "off" and settings.trace_content is True


class _Collector(http.server.ThreadingHTTPServer):
    """A loopback OTLP/HTTP collector that keeps every export request it receives."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                collector.bodies.append(self.rfile.read(length))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def spans(self) -> list[Any]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        found = []
        for body in self.bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                service = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }.get("service.name")
                for scope_spans in resource_spans.scope_spans:
                    found.extend((service, span) for span in scope_spans.spans)
        return found


def test_moa_run_sends_spans_to_an_otlp_collector_with_two_variables(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """README, "Tracing": OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SERVICE_NAME are all it takes."""
    config = tmp_path / "moa.yaml"
    config.write_text(json.dumps(TWO_LAYERS))
    (tmp_path / ".env.local").write_text(
        f"PROVIDER_API_KEY={CANARY_KEY}\nBASE_URL={fake.base_url}\n"
    )
    collector = _Collector()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MOA_"))}
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", _readme_block(), flags=re.M))
        assert sorted(exports) == ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"]
        env |= {**exports, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url}
        done = subprocess.run(
            [sys.executable, "-m", "moa", "run", "Why?", "-c", str(config), "--no-stream"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "answer from m/AGG"
        spans = collector.spans()
    finally:
        collector.shutdown()
        collector.server_close()
    names = sorted(span.name for _, span in spans)
    assert names.count("invoke_agent moa") == 1 and names.count("chat m/A") == 1
    assert len(names) == 1 + 4 + 6
    assert {service for service, _ in spans} == {exports["OTEL_SERVICE_NAME"]}
    assert not any(CANARY_KEY.encode() in body for body in collector.bodies)


def _readme_block() -> str:
    """The bash block of README's "Tracing (OpenTelemetry)" section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Tracing (OpenTelemetry)", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)
    return str(block)
