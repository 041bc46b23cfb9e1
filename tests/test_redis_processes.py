"""Two `moa batch` processes share one provider rate limit through a real redis-server."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from moa.testing import FakeProvider, Reply
from tests._windows import max_in_window, rate
from tests.conftest import CANARY_KEY, ROOT

pytest.importorskip("redis", reason="pip install 'moa-llm[redis]'")

CONFIG = """
rate_limit: {requests_per_minute: 1200}
proposal_layers:
  - neurons:
    - {model: "meta-llama/M"}
aggregation_layer:
  model: "meta-llama/M"
"""


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def test_two_processes_share_requests_per_minute_through_redis(
    fake: FakeProvider, redis_url: str
) -> None:
    _flush(redis_url)
    fake.set_default(Reply(latency=0.05))
    Path("moa.yaml").write_text(CONFIG)
    for name in ("a", "b"):
        Path(f"{name}.jsonl").write_text(
            "".join(json.dumps(f"{name}{i}") + "\n" for i in range(30))
        )
    env = {
        **os.environ, "BASE_URL": fake.base_url, "PROVIDER_API_KEY": CANARY_KEY,
        "MOA_REDIS_URL": redis_url, "MOA_MAX_RETRIES": "0", "PYTHONPATH": str(ROOT),
    }  # fmt: skip
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "moa",
                "batch",
                f"{name}.jsonl",
                "-o",
                f"{name}.out.jsonl",
                "-c",
                "moa.yaml",
                "--no-progress",
                "--concurrency",
                "8",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    requests = sorted(fake.requests, key=lambda r: r.started)
    assert len(requests) == 120
    # Both processes were calling at the same time, in the middle of the run.
    middle = {(r.last_user or "?")[0] for r in requests[40:80]}
    assert {"a", "b"} <= middle, middle
    starts = [r.started for r in requests]
    assert sorted(starts)[-1] - sorted(starts)[0] >= 119 * 0.05 - 0.2  # never faster
    # Tolerance +2: calls sent up to ~100 ms late by event-loop or RPC jitter. (A machine far
    # more loaded than its cores stops whole processes for longer: see benchmarks/scale.py.)
    assert max_in_window(starts) <= 20 + 2, f"load average {os.getloadavg()}"
    assert rate(starts) == pytest.approx(20, rel=0.1)


def test_readme_redis_commands_share_buckets(
    fake: FakeProvider, redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """README's `moa serve` + `moa batch` with MOA_REDIS_URL: both use the same buckets."""
    import redis

    _flush(redis_url)
    section = (ROOT / "README.md").read_text().split("## Scaling out", 1)[1].split("\n## ", 1)[0]
    (block,) = [b for b in re.findall(r"```bash\n(.*?)\n```", section, flags=re.S) if "REDIS" in b]
    export, serve, batch = block.splitlines()
    assert export == "export MOA_REDIS_URL=redis://127.0.0.1:6379/0"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "scale.yaml", tmp_path / "examples" / "scale.yaml")
    env = {
        **os.environ, "BASE_URL": fake.base_url, "PROVIDER_API_KEY": CANARY_KEY,
        "MOA_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT),
    }  # fmt: skip
    serve_args = shlex.split(serve.rstrip(" &"))[1:-1]  # the port: a free one instead of 8000
    server = subprocess.Popen(
        [sys.executable, "-m", "moa", *serve_args, str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        Path("questions.jsonl").write_text(json.dumps("from the batch") + "\n")
        for name in ("BASE_URL", "PROVIDER_API_KEY", "MOA_REDIS_URL"):
            monkeypatch.setenv(name, env[name])
        from click.testing import CliRunner

        from moa.cli import cli

        result = CliRunner().invoke(cli, [*shlex.split(batch)[1:], "--no-progress"])
        assert result.exit_code == 0, result.output
        client = redis.Redis.from_url(redis_url)
        keys = sorted(k.decode() for k in client.keys("moa:rl:*"))
        assert len([k for k in keys if k.endswith(":s")]) == 3, keys  # one bucket per model
        assert all(CANARY_KEY not in k for k in keys)
        before = {k: client.hget(k, "r") for k in keys if k.endswith(":s")}
        deadline = time.monotonic() + 120
        body = json.dumps({"model": "scale", "messages": [{"role": "user", "content": "hi"}]})
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/chat/completions", data=body.encode(),
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                with urllib.request.urlopen(request, timeout=30) as response:
                    assert response.status == 200
                break
            except OSError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "moa serve did not start"
                time.sleep(0.2)
        after = {k: client.hget(k, "r") for k in before}
        assert all(after[k] != before[k] for k in before)  # the server drew from each bucket
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
