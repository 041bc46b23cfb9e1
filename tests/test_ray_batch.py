"""`moa batch --backend ray` on a real local Ray cluster (one per module: Ray takes seconds to
start), every Ray process on 127.0.0.1, against the loopback fake provider."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from moa import Settings, load_config
from moa.adapters.batch import BatchItem
from moa.cli import cli
from moa.testing import FakeProvider, Reply
from tests._windows import max_in_window, rate
from tests.conftest import CANARY_KEY, ROOT, kill_after_lines

# Read by Ray at import: without it Ray binds every interface and advertises the machine's
# address; with it, every Ray process stays on 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="pip install 'moa-llm[ray]'")

CONFIG = """
proposal_layers:
  - neurons:
    - {model: "meta-llama/A"}
aggregation_layer:
  model: "meta-llama/AGG"
"""


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _listening_addresses(pids: set[int]) -> list[str]:
    """Local addresses of the TCP sockets that processes `pids` listen on (from `ss`)."""
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True)
    addresses = []
    for line in lines.stdout.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            addresses.append(line.split()[3] + " " + line.split()[-1])
    return addresses


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray on 127.0.0.1 with 2 CPUs; yields its address. Fails if any Ray process
    listens on anything but loopback."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        ray_pids = _descendants(os.getpid())
        addresses = _listening_addresses(ray_pids)
        assert addresses, "found no listening Ray process"
        assert all(a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")) for a in addresses), (
            addresses
        )
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture
def settings(fake: FakeProvider) -> Settings:
    from pydantic import SecretStr

    return Settings(provider_api_key=SecretStr(CANARY_KEY), base_url=fake.base_url, max_retries=0)


def _items(n: int) -> list[BatchItem]:
    return [BatchItem(f"id-{i}", f"q{i}") for i in range(n)]


def _ids(path: Path) -> list[Any]:
    if path.suffix == ".parquet":
        import pyarrow.dataset as ds

        return list(ds.dataset(path, format="parquet").to_table(columns=["id"])["id"].to_pylist())
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_500_queries_on_two_actors_give_500_rows_once(
    ray_cluster: str, fake: FakeProvider, settings: Settings
) -> None:
    from moa.adapters._batch_io import open_sink
    from moa.adapters._batch_ray import run_batch_ray

    summary = run_batch_ray(
        load_config(CONFIG, is_file_path=False), settings, _items(500),
        open_sink("out.parquet"), actors=2, concurrency=16,
    )  # fmt: skip
    ids = _ids(Path("out.parquet"))
    assert sorted(ids) == sorted(f"id-{i}" for i in range(500))
    assert summary.done == 500 and summary.errors == 0
    assert all(rows > 0 for rows in summary.rows_per_worker) and len(summary.rows_per_worker) == 2
    assert len(fake.requests) == 1000
    assert all(CANARY_KEY not in json.dumps(r) for r in [summary.failed_ids])


def test_a_killed_actor_still_gives_every_row_once(
    ray_cluster: str, fake: FakeProvider, settings: Settings
) -> None:
    from moa.adapters._batch_io import open_sink
    from moa.adapters._batch_ray import run_batch_ray

    fake.set_default(Reply(latency=0.02))
    pids: list[int] = []
    killed: list[int] = []

    def on_workers(workers: list[Any]) -> None:
        pids.extend(ray.get([w.pid.remote() for w in workers]))

    def on_item(record: dict[str, Any]) -> None:
        if not killed and len(fake.requests) >= 200:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    summary = run_batch_ray(
        load_config(CONFIG, is_file_path=False), settings, _items(300),
        open_sink("out.jsonl"), actors=2, concurrency=8, on_workers=on_workers,
        on_item=on_item,
    )  # fmt: skip
    assert killed
    ids = _ids(Path("out.jsonl"))
    assert len(ids) == 300 and sorted(ids) == sorted(f"id-{i}" for i in range(300))
    assert summary.done == 300 and summary.errors == 0


def test_a_crashed_run_resumes(
    ray_cluster: str, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL a `moa batch --backend ray --ray-address ...` driver mid-run; rerun it."""
    fake.set_default(Reply(latency=0.05))
    Path("moa.yaml").write_text(CONFIG)
    Path("in.jsonl").write_text(
        "".join(json.dumps({"id": i, "query": f"q{i}"}) + "\n" for i in range(200))
    )
    env = {
        **os.environ, "BASE_URL": fake.base_url, "PROVIDER_API_KEY": CANARY_KEY,
        "MOA_MAX_RETRIES": "0", "PYTHONPATH": str(ROOT),
    }  # fmt: skip
    command = [
        "batch", "in.jsonl", "-o", "out.jsonl", "-c", "moa.yaml", "--backend", "ray",
        "--actors", "2", "--concurrency", "2", "--ray-address", ray_cluster, "--no-progress",
    ]  # fmt: skip
    out = Path("out.jsonl")
    kill_after_lines(command, env, out, 20)
    first = _ids(out)
    assert 20 <= len(first) < 200 and len(set(first)) == len(first)
    fake.set_default(Reply())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, [*command[:-1], "--concurrency", "8", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"{len(first)} already in out.jsonl" in result.stderr
    assert sorted(_ids(out)) == list(range(200))


def test_two_actors_share_one_rate_limit(
    ray_cluster: str, fake: FakeProvider, settings: Settings
) -> None:
    """requests_per_minute 1200 through the named limiter actor: 20 calls a second in all."""
    from moa.adapters._batch_io import open_sink
    from moa.adapters._batch_ray import run_batch_ray

    fake.set_default(Reply(latency=0.05))
    config = load_config(
        "rate_limit: {requests_per_minute: 1200}\n" + CONFIG.replace("AGG", "A"),
        is_file_path=False,
    )
    summary = run_batch_ray(
        config, settings, _items(60), open_sink("out.jsonl"), actors=2, concurrency=8
    )
    assert summary.done == 60 and summary.errors == 0
    assert all(rows > 0 for rows in summary.rows_per_worker)
    starts = [r.started for r in fake.requests]
    assert len(starts) == 120
    assert sorted(starts)[-1] - sorted(starts)[0] >= 119 * 0.05 - 0.2  # never faster
    # Tolerance +2: calls sent up to ~100 ms late by event-loop or RPC jitter. (A machine far
    # more loaded than its cores stops whole processes for longer: see benchmarks/scale.py.)
    assert max_in_window(starts) <= 20 + 2, f"load average {os.getloadavg()}"
    assert rate(starts) == pytest.approx(20, rel=0.1)


def _readme_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Scaling out", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_readme_scaling_out_commands_run(
    ray_cluster: str, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """README's two `moa batch --backend ray` commands, as shown, on the test's Ray cluster
    (the cluster one with its s3:// URIs pointed at local files; `--ray-address auto` finds
    the Ray this process is connected to)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    local, cluster = _readme_commands()[:2]
    monkeypatch.setenv("BASE_URL", fake.base_url)
    monkeypatch.setenv("PROVIDER_API_KEY", CANARY_KEY)
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "scale.yaml", tmp_path / "examples" / "scale.yaml")
    Path("questions.jsonl").write_text("".join(json.dumps(f"q{i}") + "\n" for i in range(10)))
    result = CliRunner().invoke(cli, [*shlex.split(local)[1:], "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(_ids(Path("answers.parquet"))) == list(range(1, 11))

    bucket = tmp_path / "bucket"
    bucket.mkdir()
    pq.write_table(
        pa.table({"id": [f"p{i}" for i in range(6)], "query": [f"x{i}" for i in range(6)]}),
        bucket / "questions.parquet",
    )
    args = shlex.split(cluster.replace("s3://my-bucket/", f"file://{bucket}/"))
    result = CliRunner().invoke(cli, [*args[1:], "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(_ids(bucket / "answers.parquet")) == [f"p{i}" for i in range(6)]
    assert "spend" not in result.stderr or "$" in result.stderr
