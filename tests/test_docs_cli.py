"""README's `moa` command lines stay true: every command and option they use exists."""

from __future__ import annotations

import re
import shlex

import pytest

from moa.cli import cli
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[list[str]]:
    commands = []
    for heading in ("Command line", "Server"):
        section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
        for block in re.findall(r"```bash\n(.*?)\n```", section, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("|"):
                    words = shlex.split(part, comments=True)
                    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                        words = words[1:]  # VAR=value prefixes
                    if words and words[0] == "moa":
                        if ">" in words:
                            words = words[: words.index(">")]
                        commands.append(words[1:])
    return commands


COMMANDS = readme_commands()


def test_readme_shows_every_command() -> None:
    assert {c[0] for c in COMMANDS} == set(cli.commands)


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_readme_command_parses(args: list[str]) -> None:
    command = cli.commands[args[0]]
    with command.make_context(args[0], args[1:]) as ctx:
        config = ctx.params.get("config")
        paths = [config] if config else []
        paths += [str(spec).rpartition("=")[2] for spec in ctx.params.get("configs") or ()]
        for path in paths:
            if str(path).startswith("examples/"):
                assert (ROOT / path).is_file(), path
