"""Pages generated when mkdocs builds the site (run by the mkdocs-gen-files plugin).

- `index.md` is README.md: the repository's entry point is the site's home page.
- `config-reference.md` is rendered from moa's JSON Schema (`moa schema`) by jsonschema-markdown.
- Repository files the pages link to (examples, plugin READMEs, benchmarks) are brought in
  under `repo/`, and links are rewritten to them, so a link that works on GitHub works on
  the site and a broken one fails `mkdocs build --strict`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

import jsonschema_markdown
import mkdocs_gen_files

from moa.config._schema import config_json_schema

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(\))")

copied: set[str] = set()


def site_path(repo_path: str) -> str:
    """Where the repository file `repo_path` lives on the site."""
    if repo_path == "README.md":
        return "index.md"
    if repo_path.startswith("docs/"):
        return repo_path.removeprefix("docs/")
    return f"repo/{repo_path}"


def rewrite(text: str, source: str) -> str:
    """`text` (the repository file `source`) with its relative links pointing into the site."""
    page_dir = PurePosixPath(site_path(source)).parent

    def one(match: re.Match[str]) -> str:
        target = match.group(2)
        if re.match(r"^[a-z]+:", target) or target.startswith("/"):
            return match.group(0)  # external or absolute: left alone
        repo_path = os.path.normpath(os.path.join(os.path.dirname(source), target))
        if (ROOT / repo_path).is_dir() and (ROOT / repo_path / "README.md").is_file():
            repo_path = f"{repo_path}/README.md"
        if not (ROOT / repo_path).is_file():
            return match.group(0)  # left as written: mkdocs --strict reports it
        bring(repo_path)
        new = os.path.relpath(site_path(repo_path), page_dir)
        return f"{match.group(1)}{new}{match.group(3) or ''}{match.group(4)}"

    return LINK.sub(one, text)


def bring(repo_path: str) -> None:
    """Put the repository file on the site (once), links rewritten if it is Markdown."""
    if repo_path in copied:
        return
    copied.add(repo_path)
    source = ROOT / repo_path
    if repo_path.endswith(".md"):
        text = rewrite(source.read_text(encoding="utf-8"), repo_path)
        with mkdocs_gen_files.open(site_path(repo_path), "w") as f:
            f.write(text)
        mkdocs_gen_files.set_edit_path(site_path(repo_path), f"../{repo_path}")
    else:
        with mkdocs_gen_files.open(site_path(repo_path), "wb") as f:
            f.write(source.read_bytes())


for page in ("README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))):
    bring(page)
for readme in ("plugins/moa-llamacpp", "plugins/moa-function", "plugins/TEMPLATE", "benchmarks"):
    bring(f"{readme}/README.md")

with mkdocs_gen_files.open("config-reference.md", "w") as f:
    f.write(
        "Generated from the JSON Schema of a config file (`moa schema` prints it: every "
        "neuron type installed where this site was built). The YAML reference in the "
        "[home page](index.md#yaml-reference) explains the keys with examples.\n\n"
    )
    reference = jsonschema_markdown.generate(
        config_json_schema(), title="Config reference", footer=False
    )
    f.write(reference)
