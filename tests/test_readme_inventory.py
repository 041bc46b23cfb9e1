"""Every claim in README.md is a test. This file keeps README and the tests in step:

- every fenced block of README is listed in `COVERAGE` with the test that runs or checks it,
  so a new block fails here until it has one (and a removed one until its entry goes);
- the checks that hold for every block of a kind run on all of them: Python compiles, YAML
  mixtures load, every `moa` command line parses (tests/test_docs_cli.py);
- the tables of defaults (YAML reference, Resilience, Tracing, Local models) state the
  code's defaults, and name every key of the config models;
- every extra, script, file link and `MOA_*` variable README names exists.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from moa import NeuronConfig, Settings
from moa.config import AggregationLayerConfig, MoAConfig, ProposalLayerConfig, load_config
from moa.config._models import RetryConfig
from moa.neurons.llm import LLMConfig
from moa.retry import StreamLimits
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")

_D = "tests/test_docs.py::"
_S = "tests/test_readme_snippets.py::"
_CLI = "tests/test_docs_cli.py::test_readme_command_parses"
_EVAL = "tests/test_eval_docs.py::"
_PROXY = "tests/test_litellm_proxy.py::"

# (section, language, first line) -> the test that runs the block or checks what it says.
COVERAGE: dict[tuple[str, str, str], str] = {
    ("Install and run", "bash", 'CMAKE_ARGS="-DGGML_NATIVE=OFF'): (
        "tests/test_cli.py::test_zero_config_run_uses_the_local_preset"
    ),
    ("Install and run", "", "PROVIDER_API_KEY=your_api_key_here"): (
        _S + "test_readme_env_local_block_is_what_settings_read"
    ),
    ("Run the tests", "bash", 'CMAKE_ARGS="-DGGML_NATIVE=OFF'): (
        _D + "test_ci_runs_exactly_the_readme_test_command"
    ),
    ("Quickstart", "python", "import asyncio"): _S + "test_readme_quickstart_runs",
    ("Command line", "bash", 'moa run "Why is the sky blue?" -c examples/moa_config.yaml'): _CLI,
    ("Command line", "bash", 'moa run "Why is the sky blue?" -c examples/small.yaml --trace'): (
        _CLI
    ),
    ("Command line", "", '"Why is the sky blue?"'): _S + "test_readme_batch_lines_in_and_out",
    ("Command line", "", '{"id": "q2", "content": "..."'): _S
    + "test_readme_batch_lines_in_and_out",
    ("Is the mixture worth it?", "bash", "moa eval questions.jsonl"): (
        _EVAL + "test_every_eval_command_parses_and_names_existing_examples"
    ),
    ("Is the mixture worth it?", "yaml", "proposal_layers:"): (
        _EVAL + "test_the_vote_config_is_valid_and_votes"
    ),
    ("Measured here, offline", "bash", "moa eval --dataset truthfulqa-mc1"): (
        _EVAL + "test_every_eval_command_parses_and_names_existing_examples"
    ),
    ("Measured here, offline", "python", "from moa import hookimpl"): (
        _EVAL + "test_the_plugin_snippet_registers_a_scorer_and_a_dataset"
    ),
    ("Server", "bash", "pip install -e '.[server]'"): (
        _S + "test_readme_server_commands_answer_curl_and_the_openai_client"
    ),
    ("Server", "bash", "moa serve -c research=examples/moa_config.yaml"): _CLI,
    ("Server", "bash", "curl http://127.0.0.1:8000/v1/chat/completions"): (
        _S + "test_readme_server_commands_answer_curl_and_the_openai_client"
    ),
    ("Server", "python", "from openai import OpenAI"): (
        _S + "test_readme_server_commands_answer_curl_and_the_openai_client"
    ),
    ("From litellm", "python", "import litellm"): _S + "test_readme_litellm_provider_program_runs",
    ("From litellm", "yaml", "model_list:"): _PROXY + "test_readme_proxy_config_runs_the_mixture",
    ("From litellm", "bash", "export MOA_LITELLM_CONFIGS="): (
        _PROXY + "test_readme_proxy_config_runs_the_mixture"
    ),
    ("From litellm", "python", "from openai import OpenAI"): (
        _PROXY + "test_readme_proxy_config_runs_the_mixture"
    ),
    ("YAML reference", "yaml", "use_annotator: true"): "test_moa_config_yaml_blocks_load",
    ("YAML reference", "", "moa.ConfigError: invalid moa config"): (
        _S + "test_readme_config_error_text_is_what_moa_prints"
    ),
    ("Streaming", "python", "import asyncio"): _D + "test_readme_snippets_run",
    ("Usage and cost", "python", "import asyncio"): _S + "test_readme_usage_and_cost_program_runs",
    ("Context budget", "python", "import asyncio"): _D + "test_readme_snippets_run",
    ("Run reports", "bash", 'moa run "Why is the sky blue?"'): (
        "tests/test_report.py::test_moa_run_and_batch_write_reports"
    ),
    ("Run reports", "python", "from moa.report import"): (
        "tests/test_report.py::test_moa_run_and_batch_write_reports"
    ),
    ("Tracing (OpenTelemetry)", "bash", "pip install 'moa-llm[otel]'"): (
        "tests/test_tracing.py::test_moa_run_sends_spans_to_an_otlp_collector_with_two_variables"
    ),
    ("Tracing (OpenTelemetry)", "", "invoke_agent moa"): (
        "tests/test_tracing.py::test_span_tree_of_two_layers_with_annotator_a_retry_and_a_fallback"
    ),
    ("Errors", "", "MoAError"): _S + "test_readme_error_tree_is_moas_hierarchy",
    ("Errors", "python", "from moa import AggregationFailed"): (
        _S + "test_readme_error_handling_snippet"
    ),
    ("Local models", "bash", 'CMAKE_ARGS="-DGGML_NATIVE=OFF'): (
        _D + "test_readme_main_command_installs_the_local_model_and_runs"
    ),
    ("Local models", "python", "from moa import create_moa_from_config"): (
        _D + "test_readme_local_models_example_runs"
    ),
    ("Local models", "yaml", "proposal_layers:"): (
        "plugins/moa-llamacpp/tests/test_batching.py::"
        "test_readme_local_models_config_loads_with_the_documented_settings"
    ),
    ("Resilience", "python", "import asyncio"): (
        _D + "test_readme_resilience_snippet_runs_and_prints_what_it_says"
    ),
    ("Resilience", "", "partial: True"): (
        _D + "test_readme_resilience_snippet_runs_and_prints_what_it_says"
    ),
    ("Plugins: your own neuron types", "python", "from typing import Literal"): (
        _S + "test_readme_echo_plugin_runs"
    ),
    ("Plugins: your own neuron types", "toml", "[project.entry-points.moa]"): (
        _S + "test_readme_toml_entry_point_is_how_the_test_plugin_is_published"
    ),
    ("Plugins: your own neuron types", "python", "# my_rules.py"): (
        _D + "test_readme_function_neuron_example"
    ),
    ("Plugins: your own neuron types", "yaml", "proposal_layers:"): (
        _D + "test_readme_function_neuron_example"
    ),
    ("Testing your own mixtures", "python", "from moa import create_moa_from_config"): (
        _D + "test_readme_testing_examples_run"
    ),
    ("Testing your own mixtures", "python", "from moa import ProviderError"): (
        _D + "test_readme_testing_examples_run"
    ),
    ("Scaling out", "bash", "moa batch questions.jsonl -o answers.parquet"): (
        "tests/test_ray_batch.py::test_readme_scaling_out_commands_run"
    ),
    ("Scaling out", "bash", "moa batch s3://my-bucket/questions.parquet"): (
        "tests/test_ray_batch.py::test_readme_scaling_out_commands_run"
    ),
    ("Scaling out", "yaml", "rate_limit:"): "test_moa_config_yaml_blocks_load",
    ("Scaling out", "bash", "export MOA_REDIS_URL="): (
        "tests/test_redis_processes.py::test_readme_redis_commands_share_buckets"
    ),
}


def readme_blocks() -> list[tuple[str, str, str, str]]:
    """(section, language, first line, text) of every fenced block, in order."""
    found, heading = [], ""
    for part in re.split(r"(^```[^\n]*\n.*?^```$)", README, flags=re.S | re.M):
        if part.startswith("```"):
            language, _, text = part[3:-3].partition("\n")
            found.append((heading, language, text.splitlines()[0], text.rstrip("\n")))
        else:
            headings = re.findall(r"^#+ (.+)$", part, flags=re.M)
            heading = headings[-1] if headings else heading
    return found


BLOCKS = readme_blocks()


def covering(section: str, language: str, first: str) -> str | None:
    for (s, lang, prefix), test in COVERAGE.items():
        if (s, lang) == (section, language) and first.startswith(prefix):
            return test
    return None


def test_every_readme_block_has_a_test_and_every_listed_test_exists() -> None:
    missing = [b[:3] for b in BLOCKS if covering(*b[:3]) is None]
    assert not missing, (
        f"README blocks without a test (add one, then list it in COVERAGE): {missing}"
    )
    stale = [
        k for k in COVERAGE if not any(b[:2] == k[:2] and b[2].startswith(k[2]) for b in BLOCKS)
    ]
    assert not stale, f"COVERAGE lists blocks README no longer has: {stale}"
    for test in set(COVERAGE.values()):
        path, _, name = test.rpartition("::")
        source = (ROOT / path).read_text() if path else Path(__file__).read_text()
        assert re.search(rf"^(async )?def {name}\(", source, flags=re.M), test


@pytest.mark.parametrize("block", [b for b in BLOCKS if b[1] == "python"], ids=lambda b: b[0])
def test_python_blocks_compile(block: tuple[str, str, str, str]) -> None:
    compile(block[3], "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


MIXTURES = [b for b in BLOCKS if b[1] == "yaml" and "proposal_layers:" in b[3]]


@pytest.mark.parametrize("block", MIXTURES, ids=lambda b: b[0])
def test_moa_config_yaml_blocks_load(block: tuple[str, str, str, str]) -> None:
    """Every mixture README shows is a valid config (with the plugins of this repository)."""
    config = load_config(block[3], is_file_path=False)
    assert config.proposal_layers


def table(title: str) -> dict[str, list[str]]:
    """The rows of the first Markdown table after `title`, keyed by their first cell."""
    after = README.split(title, 1)[1]
    if title.startswith("|"):  # the title is the table's header row
        after = title + after
    lines = re.search(r"^\|.*?(?=\n[^|])", after, flags=re.S | re.M)
    assert lines is not None, title
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[0].splitlines()]
    return {row[0].strip("`"): row[1:] for row in rows[2:]}


def literal(cell: str) -> Any:
    """A default cell that is a plain value (`0.7`, `false`, `[]`), else None (prose)."""
    text = cell.strip("`")
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return float(text)
    return {"true": True, "false": False, "[]": [], "{}": {}, "none": None}.get(text, "prose")


# Keys whose code default is None ("not set here") and whose effective default is elsewhere.
EFFECTIVE: dict[str, Any] = {
    "stream_idle_timeout": StreamLimits().idle,
    "stream_timeout": StreamLimits().total,
}


def assert_defaults(rows: dict[str, list[str]], model: type[BaseModel], column: int = 0) -> None:
    for key, cells in rows.items():
        field = model.model_fields.get(key)
        expected = literal(cells[column])
        if field is None or expected == "prose" or field.is_required():
            continue
        default = field.get_default(call_default_factory=True)
        if default is None:
            default = EFFECTIVE.get(key)  # unset: the value moa then uses
        assert default == expected, f"README says {key} defaults to {cells[column]}, code {default}"


@pytest.mark.parametrize(
    ("title", "model"),
    [
        ("**Top level**", MoAConfig),
        ("**Proposal layer**", ProposalLayerConfig),
        ("**Neuron keys**", LLMConfig),
        ("**Aggregation layer** keys", AggregationLayerConfig),
    ],
)
def test_yaml_reference_tables_name_every_key_with_the_codes_default(
    title: str, model: type[BaseModel]
) -> None:
    rows = table(title)
    keys = set(model.model_fields)
    if model is AggregationLayerConfig:
        keys -= {"neuron"}  # the aggregator's neuron keys are those of the "Neuron keys" table
    assert keys <= set(rows), f"{title} lacks {keys - set(rows)}"
    assert_defaults(rows, model)


def test_resilience_table_states_the_codes_defaults() -> None:
    rows = table("| key | where | default | meaning |")
    settings = Settings()
    assert rows["timeout"][1] == f"`MOA_REQUEST_TIMEOUT` or {settings.request_timeout:g}"
    assert rows["max_retries"][1] == f"`MOA_MAX_RETRIES` or {settings.max_retries}"
    limits = StreamLimits()
    assert literal(rows["stream_idle_timeout"][1]) == limits.idle
    assert literal(rows["stream_timeout"][1]) == limits.total
    retry = {k.removeprefix("retry."): v for k, v in rows.items() if k.startswith("retry.")}
    assert set(retry) == set(RetryConfig.model_fields) - {"max_retries"}
    assert_defaults(retry, RetryConfig, column=1)
    assert_defaults(rows, ProposalLayerConfig, column=1)
    assert_defaults(rows, AggregationLayerConfig, column=1)


def test_every_stated_environment_fallback_is_the_settings_default() -> None:
    """`MOA_REQUEST_TIMEOUT` or 120, `MOA_MAX_RETRIES`, else 2: wherever README says it."""
    settings = Settings()
    for variable, default in [
        ("MOA_REQUEST_TIMEOUT", settings.request_timeout),
        ("MOA_MAX_RETRIES", settings.max_retries),
    ]:
        stated = re.findall(rf"`?{variable}`?,? (?:or|else) (\d+)", README)
        assert len(stated) >= 2 and {float(s) for s in stated} == {default}, (variable, stated)


def test_tracing_settings_table_states_the_codes_defaults() -> None:
    rows = table("| setting | default | meaning |")
    fields = Settings.model_fields
    assert rows["MOA_TRACING"][0] == f"`{fields['tracing'].default}`"
    assert literal(rows["MOA_TRACE_CONTENT"][0]) == fields["trace_content"].default


def test_local_models_table_states_the_plugins_defaults() -> None:
    moa_llamacpp = pytest.importorskip("moa_llamacpp")
    model = moa_llamacpp.LlamaCppConfig
    rows = table("\n## Local models\n")
    shared = set(NeuronConfig.model_fields)  # every type's keys, in "Neuron keys" and Resilience
    assert set(model.model_fields) - shared <= set(rows), (
        set(model.model_fields) - shared - set(rows)
    )
    assert_defaults(rows, model)


def test_extras_scripts_links_and_variables_named_exist() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    named = set(re.findall(r"(?:moa-llm|\.)\[([\w-]+)\]", README))
    assert named and named <= extras, named - extras
    for script in re.findall(r"`python ((?:benchmarks|examples)/\S+\.py)", README):
        assert (ROOT / script).is_file(), script
    for target in re.findall(r"\]\(((?!https?:|#)[^)#]+)", README):
        assert (ROOT / target).exists(), target
    source = "\n".join(
        p.read_text() for p in [*ROOT.glob("moa/**/*.py"), *ROOT.glob("plugins/*/moa_*/*.py")]
    )
    for variable in set(re.findall(r"\bMOA_[A-Z_]+[A-Z]\b", README)):
        assert variable in source, f"README names {variable}, which moa never reads"


def test_the_litellm_range_readme_states_is_pyprojects() -> None:
    """README, "Install and run": `litellm>=1.102,<2`, 1.82.7 and 1.82.8 excluded; CI tests the
    oldest (`.ci/run` reads it from pyproject.toml)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (spec,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("litellm")]
    (stated,) = re.findall(r"`(litellm>=[^`;]+)`", README)
    excluded = re.findall(r"releases ([\d.]+)\s+and ([\d.]+) are excluded", README)[0]
    assert spec == stated + "".join(f",!={v}" for v in excluded)
    oldest = re.search(r"CI runs the tests that reach litellm on ([\d.]+)", README)
    assert oldest is not None and spec.startswith(f"litellm>={oldest[1].removesuffix('.0')},")
