"""README's "Is the mixture worth it?" stays true: its commands parse, its vote config is
valid and runs, and its plugin snippet registers a working scorer and dataset."""

from __future__ import annotations

import asyncio
import re
import shlex
import types
from collections.abc import Callable

from moa import MixtureOfAgents
from moa.cli import cli
from moa.config import load_config
from moa.eval import EvalItem, get_scorer, load_dataset
from moa.plugins import register_plugin, unregister_plugin
from moa.testing import FakeNeurons
from tests.conftest import ROOT

SECTION = (
    (ROOT / "README.md")
    .read_text(encoding="utf-8")
    .split("\n## Is the mixture worth it?\n", 1)[1]
    .split("\n## ", 1)[0]
)


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)\n```", SECTION, flags=re.S)


def test_every_eval_command_parses_and_names_existing_examples() -> None:
    lines = [line for block in blocks("bash") for line in block.splitlines()]
    commands = [shlex.split(line.split(">")[0], comments=True) for line in lines]
    assert any("examples/eval-local.yaml" in c for c in commands)  # the measured run
    assert commands and all(c[:2] == ["moa", "eval"] for c in commands)
    command = cli.commands["eval"]
    for words in commands:
        with command.make_context("eval", words[2:]) as ctx:
            for path in ctx.params["configs"]:
                assert (ROOT / path).is_file(), path


def test_the_vote_config_is_valid_and_votes(
    build: Callable[..., MixtureOfAgents], moa_fake_neurons: FakeNeurons
) -> None:
    (yaml_text,) = blocks("yaml")
    config = load_config(yaml_text, is_file_path=False)
    assert config.aggregation_layer.neuron.type == "vote"
    fakes = config.model_dump(mode="json")
    answers = iter(["Answer: 4", "so 5. Answer: 5", "it is 4"])
    for neuron in fakes["proposal_layers"][0]["neurons"]:
        neuron.clear()
        neuron.update({"type": "fake", "default": next(answers)})
    result = asyncio.run(build(fakes).process("2+2?"))
    assert result.content == "Answer: 4"


def test_the_plugin_snippet_registers_a_scorer_and_a_dataset() -> None:
    (snippet,) = blocks("python")
    module = types.ModuleType("readme_eval_plugin")
    exec(compile(snippet, "README.md", "exec"), module.__dict__)
    name = register_plugin(module, name="readme-eval-plugin")
    try:
        (item,) = load_dataset("capitals")
        assert item == EvalItem("fr", "Capital of France?", {"answer": "Paris"})
        score = asyncio.run(get_scorer("shorter").score("Paris", item))
        assert score.value == 1.0
    finally:
        unregister_plugin(name)
