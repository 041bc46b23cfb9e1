"""Config loading is bounded: hostile or broken YAML (alias bombs, deep nesting, huge integers,
non-UTF-8 files, duplicate keys, infinite timeouts) is a `ConfigError` naming the file, and
`moa validate` / `moa run` exit 2 with one message, never a traceback."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from moa.cli import cli
from moa.config import load_config
from moa.errors import ConfigError

HEAD = """
proposal_layers:
  - neurons:
    - model: "meta-llama/A"
"""
TAIL = """
aggregation_layer:
  model: "meta-llama/AGG"
"""


def _bomb(levels: int = 9, width: int = 9, under: str = "params") -> str:
    """The "billion laughs" in YAML: each anchor repeats the one before `width` times."""
    pad = " " * 8
    lines = (
        [f"      {under}:"] if under == "params" else [f"      {under}:", f"{pad[:6]}- model: x"]
    )
    if under == "params":
        lines.append(f"{pad}l0: &l0 [{', '.join(['lol'] * width)}]")
        for i in range(1, levels):
            lines.append(f"{pad}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    else:  # fallbacks: a mapping of keys to change, whose params hold the bomb
        lines.append(f"{pad}params:")
        lines.append(f"{pad}  l0: &l0 [{', '.join(['lol'] * width)}]")
        for i in range(1, levels):
            lines.append(f"{pad}  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return HEAD + "\n".join(lines) + "\n" + TAIL


def _validate_in_child(path: Path) -> subprocess.CompletedProcess[str]:
    """`moa validate` in a child limited to 1 GB of address space (and a generous hang guard),
    so that an unbounded expansion fails the test instead of the machine."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    return subprocess.run(
        [sys.executable, "-m", "moa", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
        cwd=path.parent,
        check=False,
    )


@pytest.mark.parametrize("under", ["params", "fallbacks"])
def test_alias_bomb_is_rejected_quickly_and_small(tmp_path: Path, under: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb(under=under))
    assert path.stat().st_size < 1000
    done = _validate_in_child(path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "bomb.yaml" in done.stderr and "alias" in done.stderr


def test_aliases_and_merge_keys_within_bounds_still_work() -> None:
    text = textwrap.dedent(
        """
        proposal_layers:
          - neurons:
            - &first {model: "meta-llama/A", temperature: 0.3, prompt: "be brief"}
            - {<<: *first, model: "meta-llama/B", temperature: 0.9}
        aggregation_layer:
          model: "meta-llama/AGG"
          params: {stop: &stop ["\\n\\n"], extra: *stop}
        """
    )
    config = load_config(text, is_file_path=False)
    second = config.proposal_layers[0].neurons[1]
    assert (second.model, second.temperature, second.prompt) == ("meta-llama/B", 0.9, "be brief")  # type: ignore[attr-defined]
    assert config.aggregation_layer.neuron.params == {"stop": ["\n\n"], "extra": ["\n\n"]}  # type: ignore[attr-defined]


def _write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


BAD_FILES: list[tuple[str, bytes | str, str]] = [
    ("huge-int.yaml", HEAD + TAIL + "seed: " + "9" * 5000 + "\n", "digits"),
    ("huge-int-param.yaml", HEAD + "      params: {n: " + "1" * 5000 + "}\n" + TAIL, "digits"),
    ("deep.yaml", HEAD + "      params: {x: " + "[" * 20000 + "]" * 20000 + "}\n" + TAIL, "deep"),
    ("deep-map.yaml", HEAD + "      params: " + "{a: " * 20000 + "1" + "}" * 20000 + "\n" + TAIL,
     "deep"),
    ("utf16.yaml", (HEAD + TAIL).encode("utf-16"), "UTF-8"),
    ("binary.yaml", bytes(range(256)) * 4, "UTF-8"),
    ("nul.yaml", b"seed: 1\x00\n", "character"),
    ("big.yaml", HEAD + "      prompt: '" + "x" * (2 << 20) + "'\n" + TAIL, "larger than"),
    ("recursive.yaml", HEAD + "      params: &p {self: *p}\n" + TAIL, "alias"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data", "fragment"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_every_loader_failure_is_a_config_error_naming_the_file(
    tmp_path: Path, name: str, data: bytes | str, fragment: str
) -> None:
    path = _write(tmp_path, name, data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert name in str(caught.value) and fragment in str(caught.value)
    assert caught.value.source == str(path)
    assert len(str(caught.value)) < 2000  # says what is wrong, never echoes the file


@pytest.mark.parametrize(("name", "data", "fragment"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_cli_exits_2_on_every_loader_failure(
    tmp_path: Path, name: str, data: bytes | str, fragment: str
) -> None:
    path = _write(tmp_path, name, data)
    for args in (["validate", str(path)], ["run", "q", "-c", str(path)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert name in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (HEAD + TAIL + "seed: 1\nseed: 2\n", "seed"),
        (HEAD + '      model: "meta-llama/B"\n' + TAIL, "proposal_layers[0].neurons[0].model"),
        (HEAD + "      params: {stop: a, stop: b}\n" + TAIL,
         "proposal_layers[0].neurons[0].params.stop"),
        (HEAD + TAIL + '  model: "other"\n', "aggregation_layer.model"),
    ],
)  # fmt: skip
def test_duplicate_keys_are_rejected_with_the_key_path(text: str, where: str) -> None:
    with pytest.raises(ConfigError, match="duplicate key") as caught:
        load_config(text, is_file_path=False)
    assert where in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        HEAD + TAIL + "timeout: .inf\n",
        HEAD + "      timeout: .inf\n" + TAIL,
        HEAD + "      timeout: .nan\n" + TAIL,
        HEAD.replace("  - neurons:", "  - deadline: .inf\n    neurons:") + TAIL,
        HEAD + TAIL + "retry: {max_retry_after: .inf}\n",
    ],
)
def test_timeouts_must_be_finite(text: str) -> None:
    with pytest.raises(ConfigError, match="finite"):
        load_config(text, is_file_path=False)


def test_a_mapping_source_is_bounded_too() -> None:
    nested: object = 1
    for _ in range(5000):
        nested = [nested]
    data = {
        "proposal_layers": [{"neurons": [{"model": "meta-llama/A", "params": {"x": nested}}]}],
        "aggregation_layer": {"model": "meta-llama/AGG"},
    }
    with pytest.raises(ConfigError, match="deep"):
        load_config(data)


def test_readme_security_section_states_the_config_limits() -> None:
    from moa.config import _yaml as _safe_yaml
    from tests.conftest import ROOT

    section = (ROOT / "README.md").read_text().split("\n## Security\n", 1)[1].split("\n## ")[0]
    rows = {
        "config size": f"{_safe_yaml.MAX_CONFIG_BYTES} bytes",
        "nesting depth": f"{_safe_yaml.MAX_DEPTH} levels",
        "values once YAML aliases are expanded": f"{_safe_yaml.MAX_VALUES}",
        "digits in an integer": f"{_safe_yaml.MAX_INT_DIGITS}",
    }
    for limit, default in rows.items():
        assert f"| {limit} | {default}" in section, limit
