"""Scaling out, side by side in one run:

1. rows/s of `moa batch` on the local backend vs Ray with 1 and 2 actors, 50 ms upstream
   (a proposer and an aggregator: two calls in a row per query);
2. the rate limiter's overhead per call: in-process, through the named Ray actor, through
   Redis (sequential permits of a bucket whose limit never makes anyone wait);
3. rate-limit adherence: requests_per_minute 1200 shared by 2 Ray actors, and by 2
   `moa batch` processes through Redis: the most calls the fake provider saw start in any
   1 s window [t, t + 1 s), and the rate from the 10th call to the last.

    python benchmarks/scale.py [--rows 400] [--concurrency 16]

Needs the ray and redis extras and Debian's redis-server. Ray runs on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read by Ray at import: loopback only
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import fake_provider_process, settings_for

from moa import MixtureOfAgents, RateLimit, load_config
from moa.adapters._batch_io import JsonlSink
from moa.adapters.batch import BatchItem, run_batch
from moa.ratelimit import LocalBackend, RateLimiter
from tests._windows import max_in_window, rate

CONFIG = """
proposal_layers:
  - neurons:
    - {model: "50ms/proposer"}
aggregation_layer:
  model: "50ms/aggregator"
"""


def _items(n: int) -> list[BatchItem]:
    return [BatchItem(i, f"q{i}") for i in range(n)]


def local_rows_per_second(base_url: str, rows: int, concurrency: int, out: Path) -> float:
    moa = MixtureOfAgents.from_config(CONFIG, is_file_path=False, settings=settings_for(base_url))

    async def go() -> float:
        await moa.prepare()
        started = time.perf_counter()
        await run_batch(moa, _items(rows), JsonlSink(out, sync=False), concurrency=concurrency)
        elapsed = time.perf_counter() - started
        await moa.aclose()
        return rows / elapsed

    return asyncio.run(go())


def ray_rows_per_second(
    base_url: str, rows: int, actors: int, concurrency: int, out: Path
) -> tuple[float, float]:
    """(steady rows/s from the first row to the last, wall seconds including actor start)."""
    from moa.adapters._batch_ray import run_batch_ray

    stamps: list[float] = []
    started = time.perf_counter()
    run_batch_ray(
        load_config(CONFIG, is_file_path=False), settings_for(base_url), _items(rows),
        JsonlSink(out, sync=False), actors=actors, concurrency=concurrency,
        on_item=lambda _: stamps.append(time.perf_counter()),
    )  # fmt: skip
    wall = time.perf_counter() - started
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), wall


async def _permits(limiter: RateLimiter, calls: int) -> float:
    limit = RateLimit(requests_per_minute=1e12)  # never waits: only the limiter's own cost
    for _ in range(20):  # warm-up: connections, the actor, the scripts
        async with limiter.permit("bench|m|-", limit):
            pass
    started = time.perf_counter()
    for _ in range(calls):
        async with limiter.permit("bench|m|-", limit):
            pass
    return (time.perf_counter() - started) / calls


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    binary = shutil.which("redis-server") or "redis-server"
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return proc, f"redis://127.0.0.1:{port}/0"


def adherence_ray(fake: Any) -> tuple[int, float, int]:
    from moa.adapters._batch_ray import run_batch_ray

    fake.reset()
    config = load_config(
        "rate_limit: {requests_per_minute: 1200}\n" + CONFIG.replace("aggregator", "proposer"),
        is_file_path=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_batch_ray(
            config, settings_for(fake.base_url), _items(100),
            JsonlSink(Path(tmp) / "out.jsonl", sync=False), actors=2, concurrency=8,
        )  # fmt: skip
    starts = [r.started for r in fake.requests]
    return max_in_window(starts), rate(starts), len(starts)


def adherence_redis(fake: Any, redis_url: str) -> tuple[int, float, int]:
    fake.reset()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "moa.yaml").write_text(
            "rate_limit: {requests_per_minute: 1200}\n" + CONFIG.replace("aggregator", "proposer")
        )
        for name in ("a", "b"):
            (root / f"{name}.jsonl").write_text(
                "".join(json.dumps(f"{name}{i}") + "\n" for i in range(50))
            )
        env = {**os.environ, "BASE_URL": fake.base_url, "PROVIDER_API_KEY": "sk-bench",
               "MOA_REDIS_URL": redis_url, "MOA_MAX_RETRIES": "0"}  # fmt: skip
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "moa",
                    "batch",
                    f"{name}.jsonl",
                    "-o",
                    f"{name}.out",
                    "-c",
                    "moa.yaml",
                    "--no-progress",
                    "--concurrency",
                    "8",
                ],
                cwd=root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name in ("a", "b")
        ]
        for proc in procs:
            proc.wait(timeout=300)
    starts = [r.started for r in fake.requests]
    return max_in_window(starts), rate(starts), len(starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    import ray

    from moa.ratelimit._ray import RayActorBackend
    from moa.ratelimit._redis import RedisBackend
    from moa.testing import FakeProvider, Reply

    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")  # fmt: skip
    workdir = Path(tempfile.mkdtemp())
    redis_proc, redis_url = start_redis(workdir)
    try:
        with fake_provider_process() as base_url:
            rows, conc = args.rows, args.concurrency
            print(f"\n1. moa batch, {rows} queries, 2 calls of 50 ms each, "
                  f"--concurrency {conc} per process/actor")  # fmt: skip
            local = local_rows_per_second(base_url, rows, conc, workdir / "l.jsonl")
            local2 = local_rows_per_second(base_url, rows, 2 * conc, workdir / "l2.jsonl")
            ray1, wall1 = ray_rows_per_second(base_url, rows, 1, conc, workdir / "r1.jsonl")
            ray2, wall2 = ray_rows_per_second(base_url, rows, 2, conc, workdir / "r2.jsonl")
            print("| backend | rows/s | / local | wall incl. actor start |")
            print("|---|---|---|---|")
            print(f"| local, concurrency {conc} | {local:.0f} | 1.00x | - |")
            print(f"| local, concurrency {2 * conc} | {local2:.0f} | {local2 / local:.2f}x | - |")
            print(f"| ray, 1 actor x {conc} | {ray1:.0f} | {ray1 / local:.2f}x | {wall1:.1f} s |")
            print(f"| ray, 2 actors x {conc} | {ray2:.0f} | {ray2 / local:.2f}x | {wall2:.1f} s |")

        print("\n2. limiter overhead per call (sequential permits, never waiting)")
        backends: list[tuple[str, Any, int]] = [
            ("in-process", LocalBackend(), 5000),
            ("named Ray actor", RayActorBackend(), 500),
            ("Redis (Lua)", RedisBackend(redis_url), 2000),
        ]
        print("| backend | per call | / in-process |")
        print("|---|---|---|")
        base = 0.0
        for name, backend, calls in backends:
            per_call = asyncio.run(_permits(RateLimiter(backend), calls))
            base = base or per_call
            print(f"| {name} | {per_call * 1e6:.0f} us | {per_call / base:.0f}x |")

        print("\n3. adherence: requests_per_minute 1200 (20/s) shared by two workers")
        print("| shared through | calls | max calls in any 1 s | rate (10th call on) |")
        print("|---|---|---|---|")
        with FakeProvider() as fake:
            fake.set_default(Reply(latency=0.05))
            top, measured, n = adherence_ray(fake)
            print(f"| named Ray actor, 2 actors | {n} | {top} (limit 20) | {measured:.2f}/s |")
            top, measured, n = adherence_redis(fake, redis_url)
            print(f"| Redis, 2 processes | {n} | {top} (limit 20) | {measured:.2f}/s |")
        print(f"\nload average at end: {os.getloadavg()[0]:.1f}")
    finally:
        redis_proc.terminate()
        redis_proc.wait()
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
