"""The `local` preset end to end: `moa run "Why is the sky blue?"` with no config and no
API key (three SmolLM2 proposers and an aggregator, in-process via moa-llamacpp), timed from
the outside: wall time of the command and time to the first byte of the answer on stdout
(the aggregator's first token: only the aggregator streams).

`--before DIR` adds rows for another version of the plugin, interleaved run by run with the
installed one: DIR must hold a `moa_llamacpp` package (e.g. extracted with
`git archive <commit> plugins/moa-llamacpp | tar -x -C /tmp/before`, then
`--before /tmp/before/plugins/moa-llamacpp`); it is put first on PYTHONPATH for those runs.

    python benchmarks/local_preset.py [--runs 1] [--before DIR]

One run takes a minute or more on 2 busy cores: note the load average printed with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

QUERY = "Why is the sky blue?"


def run_once(pythonpath: str | None) -> tuple[float, float | None]:
    """Wall seconds and seconds to the first answer byte of one `moa run` (None: it failed,
    e.g. every proposer hit its 120 s timeout on a busy machine)."""
    env = {k: v for k, v in os.environ.items() if k != "PROVIDER_API_KEY"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "moa", "run", QUERY]  # this interpreter's moa
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert child.stdout is not None
    first = child.stdout.read(1)
    first_at = time.perf_counter() - start
    rest = child.stdout.read()
    _, err = child.communicate()
    wall = time.perf_counter() - start
    if child.returncode != 0 or not first:
        print(f"  failed ({child.returncode}): {err.decode(errors='replace').strip()[-400:]}")
        return wall, None
    print(f"  answer: {(first + rest).decode(errors='replace').strip()[:160]!r}")
    return wall, first_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--before", default=None, help="directory holding an older moa_llamacpp")
    args = parser.parse_args()
    variants = {"after (installed)": None}
    if args.before:
        variants = {"before": args.before, **variants}
    figures: dict[str, list[tuple[float, float | None]]] = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, path in variants.items():
            load = os.getloadavg()
            wall, first = run_once(path)
            shown = f"{first:.1f} s" if first is not None else "none (failed)"
            print(f"{name}: wall {wall:.1f} s, first answer byte {shown}, load {load}")
            figures[name].append((wall, first))
    print("\n| plugin | wall s (median) | first aggregator token s (median) | failed runs |")
    print("|---|---|---|---|")
    for name, values in figures.items():
        walls = [wall for wall, _ in values]
        firsts = [first for _, first in values if first is not None]
        ttft = f"{statistics.median(firsts):.1f}" if firsts else "-"
        failed = len(values) - len(firsts)
        print(f"| {name} | {statistics.median(walls):.1f} | {ttft} | {failed} |")


if __name__ == "__main__":
    main()
