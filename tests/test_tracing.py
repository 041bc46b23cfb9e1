"""OpenTelemetry spans (moa.tracing) recorded by the SDK's in-memory exporter: the tree of a
run, GenAI attributes, retries and fallbacks, tokens adding up to `result.usage`, opt-in
content, no key in any attribute, context propagation, and nothing imported when off."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from conftest import CANARY_KEY
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
    import os

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
