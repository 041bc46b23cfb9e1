"""`import moa` vs `import litellm`, each in fresh interpreter processes.

Each sample starts a new `python` that times only the import statement (interpreter start-up
excluded); the bare interpreter start is shown for scale. Samples alternate between the two.

    python benchmarks/import_time.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from _common import machine, pct

_TIMED = (
    "import time; t, c = time.perf_counter(), time.process_time(); import {module}; "
    "print(time.perf_counter() - t, time.process_time() - c)"
)
ENV = {
    **os.environ,
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # as moa sets it: no network fetch at import
    "LITELLM_OFFLINE_MODE": "true",
    "LITELLM_MODE": "PRODUCTION",
}


def timed_import(module: str) -> tuple[float, float]:
    """Wall and CPU seconds of `import module` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", _TIMED.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
        env=ENV,
    )
    wall, cpu = out.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def interpreter_start() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


def main(runs: int) -> None:
    samples: dict[str, list[float]] = {"moa": [], "litellm": []}
    cpu: dict[str, list[float]] = {"moa": [], "litellm": []}
    starts: list[float] = []
    for _ in range(runs):
        for module in samples:
            wall, used = timed_import(module)
            samples[module].append(wall)
            cpu[module].append(used)
        starts.append(interpreter_start())
    moa50, lite50 = pct(samples["moa"], 50), pct(samples["litellm"], 50)
    print(f"import_time: {runs} fresh processes each; {machine()}")
    print(f"  {'import':<10} {'wall p50':>9} {'min':>9} {'max':>9} {'CPU p50':>9}")
    for module, values in samples.items():
        print(
            f"  {module:<10} {pct(values, 50) * 1000:6.0f} ms {min(values) * 1000:6.0f} ms "
            f"{max(values) * 1000:6.0f} ms {pct(cpu[module], 50) * 1000:6.0f} ms"
        )
    print(f"  (bare interpreter start-up, for scale: {pct(starts, 50) * 1000:.0f} ms)")
    print(f"  moa / litellm: {moa50 / lite50:.3f}; goal: import moa <= 150 ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    main(parser.parse_args().runs)
