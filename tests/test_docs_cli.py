"""README's `moa` command lines stay true: every command and option they use exists, in the
fenced `bash` blocks of every section and in the inline commands of the prose."""

from __future__ import annotations

import re
import shlex

import click
import pytest

from moa.cli import cli
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[list[str]]:
    """Every `moa ...` line of a fenced bash block, anywhere in README, as argv after `moa`."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)\n```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.replace("&&", "|").split("|"):
                words = shlex.split(part.rstrip(" &"), comments=True)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]  # VAR=value prefixes
                if words and words[0] == "moa":
                    if ">" in words:
                        words = words[: words.index(">")]
                    commands.append(words[1:])
    return commands


COMMANDS = readme_commands()
# `moa run --trace`, `moa validate x.yaml`... in the prose: fragments, not whole command lines.
INLINE = [shlex.split(span)[1:] for span in re.findall(r"(?<!`)`(moa [^`]+)`", README)]


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


@pytest.mark.parametrize("args", INLINE, ids=[" ".join(c) for c in INLINE])
def test_readme_inline_command_names_real_options(args: list[str]) -> None:
    assert args[0] in cli.commands, args
    command = cli.commands[args[0]]
    known = {name for p in command.params if isinstance(p, click.Option) for name in p.opts}
    for word in args[1:]:
        if word.startswith("-"):
            assert word in known, f"moa {args[0]} has no option {word}"
