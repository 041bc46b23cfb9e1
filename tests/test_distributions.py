"""Every distribution in this repository builds as a real wheel carrying what it needs at run
time: its `moa` entry point and its data files (presets). Editable installs hide a missing
package-data line; a wheel does not."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT

PLUGINS = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))

# distribution -> files its wheel must contain, and its `moa` entry points
EXPECTED: dict[str, tuple[set[str], dict[str, str]]] = {
    "moa_llm": ({"moa/presets/seed.yaml", "moa/py.typed", "moa_llm/py.typed"}, {}),
    "moa_function": ({"moa_function/py.typed"}, {"function": "moa_function"}),
    "moa_llamacpp": (
        {"moa_llamacpp/local.yaml", "moa_llamacpp/py.typed"},
        {"llamacpp": "moa_llamacpp"},
    ),
    "moa_template": ({"moa_template/py.typed"}, {"template": "moa_template"}),
}


def test_every_distribution_builds_a_complete_wheel(tmp_path: Path) -> None:
    assert {p.name for p in PLUGINS} >= {"moa-function", "moa-llamacpp", "TEMPLATE"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
            *map(str, PLUGINS),
        ],
        check=True,
        cwd=tmp_path,
    )
    wheels = {w.name.split("-")[0]: w for w in tmp_path.glob("*.whl")}
    assert len(wheels) == len(PLUGINS) + 1
    assert set(EXPECTED) <= set(wheels)
    for dist in wheels:
        files, entry_points = EXPECTED.get(dist, (set(), {}))
        with zipfile.ZipFile(wheels[dist]) as wheel:
            names = set(wheel.namelist())
            assert files <= names, (dist, files - names)
            (ep_file,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")] or [None]
            parser = configparser.ConfigParser()
            if ep_file is not None:
                parser.read_string(wheel.read(ep_file).decode())
            found = dict(parser["moa"]) if parser.has_section("moa") else {}
            if dist in EXPECTED:
                assert found == entry_points, dist
            else:  # a plugin added later: it must at least publish a `moa` entry point
                assert found, f"{dist} has no [project.entry-points.moa]"
