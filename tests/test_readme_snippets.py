"""README's code blocks that had no test of their own, run as a user would run them: the
programs as scripts against the loopback fake provider, `moa serve` as a real process on
127.0.0.1 called with curl and the official `openai` client, the plugin and error-handling
snippets in-process. tests/test_readme_inventory.py maps every README block to its test."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

import moa
from moa import (
    ConfigError,
    MissingCredentialsError,
    ProviderError,
    Settings,
    create_moa_from_config,
)
from moa.cli import cli
from moa.config import load_config
from moa.plugins import register_plugin, reload_plugins, unregister_plugin
from moa.testing import FakeNeurons, FakeProvider, Reply
from tests.conftest import CANARY_KEY, EXAMPLES, ROOT
from tests.test_readme_inventory import BLOCKS


def blocks(heading: str, language: str) -> list[str]:
    """The fenced blocks in `language` ("" for none) right under `heading` (any level)."""
    return [text for s, lang, _, text in BLOCKS if (s, lang) == (heading, language)]


def run_script(
    code: str, cwd: Path, fake: FakeProvider, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """Run `code` as a script in `cwd` (holding a copy of examples/), bare model names sent
    to the fake provider with the canary key."""
    if not (cwd / "examples").exists():
        shutil.copytree(EXAMPLES, cwd / "examples")
    (cwd / "snippet.py").write_text(code, encoding="utf-8")
    env = {
        **os.environ, "PROVIDER_API_KEY": CANARY_KEY, "BASE_URL": fake.base_url, **extra_env,
    }  # fmt: skip
    return subprocess.run(
        [sys.executable, "snippet.py"], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_readme_env_local_block_is_what_settings_read(tmp_path: Path) -> None:
    """README, "Install and run": the `.env.local` lines, read from the working directory;
    Together is the default BASE_URL."""
    (block,) = blocks("Install and run", "")
    (tmp_path / ".env.local").write_text(block + "\n")
    settings = Settings()
    assert settings.provider_api_key is not None
    assert settings.provider_api_key.get_secret_value() == "your_api_key_here"
    assert settings.base_url == dict(line.split("=", 1) for line in block.splitlines())["BASE_URL"]
    (tmp_path / ".env.local").unlink()
    assert Settings().base_url == settings.base_url  # "Together is the default"


def test_readme_quickstart_runs(fake: FakeProvider, tmp_path: Path) -> None:
    (code,) = blocks("Quickstart", "python")
    out = run_script(code, tmp_path, fake)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "answer from meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"
    assert "Total Completion Time:" in out.stdout
    prompt_tokens, completion_tokens = map(int, lines[-1].split())
    assert prompt_tokens > 0 and completion_tokens > 0
    times = json.loads(out.stdout.split("\n", 1)[1].split("Total Completion Time")[0])
    assert "proposal_layers[0].neurons[0] meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo" in times
    sent = [json.dumps(r.messages) for r in fake.requests]
    assert len(sent) == 3 * 5  # three runs of annotator, 2 + 1 proposers, aggregator
    assert any("How does it differ from classical computing?" in m for m in sent)
    assert any("Answer in one paragraph." in m and "What is a qubit?" in m for m in sent)
    assert CANARY_KEY not in out.stdout + out.stderr


def test_readme_usage_and_cost_program_runs(fake: FakeProvider, tmp_path: Path) -> None:
    """README, "Usage and cost": openai/ models go to OPENAI_BASE_URL (here the fake
    provider), the bare private model to BASE_URL; litellm prices gpt-4o-mini, the config
    prices the other."""
    (code,) = blocks("Usage and cost", "python")
    out = run_script(code, tmp_path, fake, OPENAI_API_KEY=CANARY_KEY, OPENAI_BASE_URL=fake.base_url)
    assert out.returncode == 0, out.stderr
    first, *rest = out.stdout.splitlines()
    prompt, completion, cost = first.split()
    assert int(prompt) > 0 and int(completion) > 0 and float(cost) > 0
    assert any(line.startswith("proposal_layers[0] ") for line in rest)
    assert {r.model for r in fake.requests} == {"gpt-4o-mini", "my-org/private-model"}
    # the comment names both keys it needs: without PROVIDER_API_KEY it does not build
    assert "# OPENAI_API_KEY, PROVIDER_API_KEY" in code
    (config,) = re.findall(r'config = """(.*?)"""', code, flags=re.S)
    with pytest.raises(MissingCredentialsError, match="PROVIDER_API_KEY"):
        create_moa_from_config(config, is_file_path=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_readme_server_commands_answer_curl_and_the_openai_client(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """README, "Server": `moa serve -c examples/small.yaml --port 8000` as a process (on a
    free port), then README's curl command and its openai program, streamed and not."""
    install, serve = blocks("Server", "bash")[0].splitlines()
    assert install == "pip install -e '.[server]'"
    port = free_port()
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    env = {**os.environ, "PROVIDER_API_KEY": CANARY_KEY, "BASE_URL": fake.base_url}
    argv = [a if a != "8000" else str(port) for a in shlex.split(serve)[1:]]
    server = subprocess.Popen(
        [sys.executable, "-m", "moa", *argv], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    assert json.load(r) == {"status": "ok", "models": ["small"]}
                break
            except OSError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "moa serve did not start"
                time.sleep(0.2)
        curl = blocks("Server", "bash")[2].replace("8000", str(port))
        done = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout)
        assert reply["object"] == "chat.completion"
        expected = "answer from meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"
        assert reply["choices"][0]["message"]["content"] == expected

        (code,) = blocks("Server", "python")
        out = run_script(code.replace("8000", str(port)), tmp_path, fake)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count(expected) == 2  # the whole answer, then the streamed one
        assert "CompletionUsage(" in out.stdout and "prompt_tokens=" in out.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert CANARY_KEY not in (server.stderr.read() if server.stderr else "")


def test_readme_litellm_provider_program_runs(fake: FakeProvider, tmp_path: Path) -> None:
    """README, "From litellm": `litellm.completion(model="moa/research")` after `register()`."""
    (code,) = [b for b in blocks("From litellm", "python") if "import litellm" in b]
    out = run_script(code, tmp_path, fake)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("answer from meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo ")
    assert "prompt_tokens=" in out.stdout
    assert len(fake.requests) == 5  # annotator, 2 + 1 proposers, aggregator: the whole mixture


def test_readme_batch_lines_in_and_out(
    fake: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README, "Command line", batch runs: README's three input lines give lines with the
    fields README shows, one of them failing as shown."""
    given, shown = blocks("Command line", "")
    (tmp_path / "questions.jsonl").write_text(given + "\n")
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    monkeypatch.setenv("PROVIDER_API_KEY", CANARY_KEY)
    monkeypatch.setenv("BASE_URL", fake.base_url)
    fake.script("Qwen/Qwen2.5-7B-Instruct-Turbo", Reply(status=400))
    fake.script("meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", Reply(status=400))
    (command,) = re.findall(r"^moa batch .*$", "\n".join(blocks("Command line", "bash")), re.M)
    args = shlex.split(command.split("#")[0])[1:]
    # one query at a time: the first one meets both scripted failures
    result = CliRunner().invoke(cli, [*args, "--no-progress", "--concurrency", "1"])
    assert result.exit_code == 1, result.output  # at least one query failed
    rows = {
        json.dumps(row["id"]): row
        for row in map(json.loads, (tmp_path / "answers.jsonl").read_text().splitlines())
    }
    assert sorted(rows) == ['"q2"', "1", "3"]  # "named by its line number"
    shown_keys = re.findall(r'"(\w+)": ', shown.splitlines()[0])
    assert all(list(row)[: len(shown_keys)] == shown_keys for row in rows.values())
    failed = [row for row in rows.values() if row["error"]]
    assert len(failed) == 1 and failed[0]["error_type"] == "AllNeuronsFailed"
    assert failed[0]["error"].startswith("all 2 neurons of proposal_layers[0] failed: ")


def test_readme_config_error_text_is_what_moa_prints(tmp_path: Path) -> None:
    """README, "YAML reference": the ConfigError shown, from a config with those two mistakes."""
    (shown,) = blocks("YAML reference", "")
    path = tmp_path / "moa_config.yaml"
    path.write_text(
        textwrap.dedent("""\
        proposal_layers:
          - neurons: [{model: a}]
          - neurons: [{model: b, temperature: 3.5}]
        aggregation_layer: {model: c, shufle: true}
        """)
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    header, temperature, unknown = shown.removeprefix("moa.ConfigError: ").splitlines()
    lines = str(caught.value).splitlines()
    assert lines[0] == header.replace("moa_config.yaml", str(path))
    assert lines[1] == temperature
    before, after = unknown.split(", ...")
    assert lines[2].startswith(before) and lines[2].endswith(after)


def test_readme_error_tree_is_moas_hierarchy() -> None:
    """README, "Errors": every class of the tree is exported by moa, under the parent drawn."""
    (tree,) = blocks("Errors", "")
    parents: list[tuple[int, type]] = []
    names = []
    for line in tree.splitlines():
        found = re.match(r"^([│├└─ ]*)([A-Z]\w+)", line)
        if found is None or (line.startswith("│") and not re.search(r"[├└]", line)):
            continue
        depth, cls = len(found[1]), getattr(moa, found[2])
        while parents and parents[-1][0] >= depth:
            parents.pop()
        if parents:
            assert issubclass(cls, parents[-1][1]), f"{cls.__name__} under {parents[-1][1]}"
        parents.append((depth, cls))
        names.append(found[2])
    assert len(names) == 16, names
    assert issubclass(moa.TimeoutError, TimeoutError)  # "also a builtins.TimeoutError"
    assert issubclass(moa.AllNeuronsFailed, ExceptionGroup)


def test_readme_error_handling_snippet(
    moa_fake_neurons: FakeNeurons, capsys: pytest.CaptureFixture[str]
) -> None:
    """README, "Errors": the try/except, in a coroutine, once per branch."""
    (snippet,) = blocks("Errors", "python")
    imports, body = snippet.split("\n\n", 1)
    namespace: dict[str, object] = {}
    exec(f"{imports}\n\nasync def main(moa):\n{textwrap.indent(body, '    ')}", namespace)
    config = {
        "proposal_layers": [{"neurons": [{"type": "fake", "name": "a"}]}],
        "aggregation_layer": {"type": "fake", "name": "judge"},
    }
    mixture = create_moa_from_config(config, is_file_path=False)
    main = namespace["main"]
    assert callable(main)
    moa_fake_neurons["a"].enqueue(ProviderError("down", status_code=400))
    asyncio.run(main(mixture))  # AllNeuronsFailed: printed, not raised
    assert capsys.readouterr().out.startswith("proposal_layers[0].neurons[0] 400 ")
    moa_fake_neurons["a"].enqueue("yes")
    moa_fake_neurons["judge"].enqueue(ProviderError("down", status_code=400))
    asyncio.run(main(mixture))  # AggregationFailed: printed, not raised
    printed = capsys.readouterr().out
    assert "'yes'" in printed or '"yes"' in printed, printed  # the proposal paid for


def test_readme_echo_plugin_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README, "Plugins": the EchoNeuron module, imported as a user's module is, registered
    and used as `type: echo`."""
    (tmp_path / "readme_echo_plugin.py").write_text(
        blocks("Plugins: your own neuron types", "python")[0]
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MOA_LOAD_PLUGINS", "")  # not the installed test plugin's own `echo`
    reload_plugins()
    module = importlib.import_module("readme_echo_plugin")
    name = register_plugin(module, name="readme-echo")
    try:
        mixture = create_moa_from_config(
            {
                "proposal_layers": [{"neurons": [{"type": "echo", "prefix": "p"}]}],
                "aggregation_layer": {"type": "echo"},
            },
            is_file_path=False,
        )
        result = mixture.process_sync("question")
    finally:
        unregister_plugin(name)
        sys.modules.pop("readme_echo_plugin", None)
        monkeypatch.delenv("MOA_LOAD_PLUGINS")
        reload_plugins()
    assert result.layers[0].neurons[0].text == "p: question"
    assert result.content == "echo: question"


def test_readme_toml_entry_point_is_how_the_test_plugin_is_published() -> None:
    (toml,) = blocks("Plugins: your own neuron types", "toml")
    header, entry = toml.splitlines()
    pyproject = (ROOT / "tests" / "plugins" / "moa-echo" / "pyproject.toml").read_text()
    assert header in pyproject and entry.split(" = ")[0] in pyproject
