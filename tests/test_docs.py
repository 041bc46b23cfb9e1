"""README's promises: its two commands, and the seed's usage example run end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import CANARY_KEY, EXAMPLES, ROOT

from moa.testing import FakeProvider

README = (ROOT / "README.md").read_text(encoding="utf-8")


def bash_blocks(heading: str) -> list[str]:
    section = README.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    (command,) = bash_blocks("Run the tests")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == command


def test_readme_main_command_runs_the_quickstart() -> None:
    (command,) = bash_blocks("Install and run")
    assert "examples/quickstart.py" in command
    assert (ROOT / "examples" / "quickstart.py").is_file()


def test_seed_usage_example_end_to_end(fake: FakeProvider, tmp_path: Path) -> None:
    """`python examples/quickstart.py` with .env.local pointing at the loopback provider."""
    (tmp_path / ".env.local").write_text(
        f"PROVIDER_API_KEY={CANARY_KEY}\nBASE_URL={fake.base_url}\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"PROVIDER_API_KEY", "BASE_URL"}}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "What is 2+2?"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("answer from meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo\n")
    assert "Total Completion Time:" in out.stdout
    assert CANARY_KEY not in out.stdout + out.stderr
    models = [r.model for r in fake.requests]
    assert models[0] == "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"  # the annotator first
    assert models[-1] == "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"
    assert len(models) == 5


def test_quickstart_without_a_key_says_which_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"PROVIDER_API_KEY", "BASE_URL"}}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "hi"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "PROVIDER_API_KEY" in out.stderr and "Traceback" not in out.stderr


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
