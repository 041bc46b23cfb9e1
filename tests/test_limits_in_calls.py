"""Rate limits, cooldowns and spend caps as calls see them: a mixture against the fake
provider, with the limiter in this process (the other backends: test_ratelimit.py,
test_ray_batch.py, test_redis_processes.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from moa import MixtureOfAgents, SpendLimitExceeded
from moa.cli import cli
from moa.testing import FakeProvider, Reply
from tests.conftest import CANARY_KEY


def limited_config(limit: str, *, extra: str = "") -> str:
    return f"""
    rate_limit: {limit}
    {extra}
    proposal_layers:
      - neurons:
        - {{model: "meta-llama/M"}}
    aggregation_layer:
      model: "meta-llama/M"
    """


async def test_two_mixtures_in_one_process_share_the_bucket(
    fake: FakeProvider, build: Callable[..., MixtureOfAgents]
) -> None:
    fake.set_default(Reply(latency=0.02))
    first = build(limited_config("{requests_per_minute: 1200}"))
    second = build(limited_config("{requests_per_minute: 1200}"))
    await asyncio.gather(first.prepare(), second.prepare())  # litellm loaded before the clock
    await asyncio.gather(
        *(moa.process(f"q{i}") for i in range(15) for moa in (first, second))
    )  # 60 calls at 20 a second
    starts = sorted(r.started for r in fake.requests)
    assert len(starts) == 60
    # Never faster than one bucket allows (unshared, each mixture would go at 20 a second
    # and all would be sent in 1.45 s). Calls are sent no earlier than reserved, however
    # loaded the machine is; only the first may arrive late (its new connection): 0.2 s.
    assert starts[-1] - starts[0] >= 59 * 0.05 - 0.2


async def test_a_retry_after_pauses_every_caller_of_the_bucket(
    fake: FakeProvider, build: Callable[..., MixtureOfAgents]
) -> None:
    fake.script("meta-llama/M", Reply(status=429, retry_after=0.6))
    fake.set_default(Reply())
    moa = build(limited_config("{}"))  # no limits: only shared cooldowns
    with pytest.raises(Exception):  # noqa: B017 - the 429 fails the only proposer
        await moa.process("first")
    paused_at = time.monotonic()
    await moa.process("second")
    assert time.monotonic() - paused_at > 0.5
    first, second = fake.requests[0], fake.requests[1]
    assert second.started - first.started > 0.55


async def test_no_rate_limit_means_no_limiter(
    fake: FakeProvider, build: Callable[..., MixtureOfAgents]
) -> None:
    import moa.ratelimit as ratelimit

    moa = build(limited_config("null"))
    await moa.process("q")
    assert ratelimit._limiter is None


async def test_a_query_stops_at_max_cost_per_query(
    fake: FakeProvider, build: Callable[..., MixtureOfAgents]
) -> None:
    fake.set_default(Reply(usage=(100, 100)))
    config = """
    max_cost_per_query: 0.0015
    proposal_layers:
      - neurons:
        - {model: "meta-llama/A", input_cost_per_token: 0.00001, output_cost_per_token: 0.00001}
      - neurons:
        - {model: "meta-llama/B", input_cost_per_token: 0.00001, output_cost_per_token: 0.00001}
    aggregation_layer:
      model: "meta-llama/AGG"
    """
    moa = build(config)
    with pytest.raises(SpendLimitExceeded) as caught:
        await moa.process("q")
    assert caught.value.spent == pytest.approx(0.002) and caught.value.limit == 0.0015
    assert [layer.name for layer in caught.value.layers] == ["proposal_layers[0]"]
    assert [r.model for r in fake.requests] == ["meta-llama/A"]  # layer 2 never started
    assert "0.002000" in str(caught.value) and "max_cost_per_query" in str(caught.value)


@pytest.mark.parametrize("output", ["out.jsonl", "out.parquet"])
def test_batch_stops_starting_queries_at_max_cost(
    fake: FakeProvider, monkeypatch: pytest.MonkeyPatch, output: str
) -> None:
    monkeypatch.setenv("BASE_URL", fake.base_url)
    monkeypatch.setenv("PROVIDER_API_KEY", CANARY_KEY)
    fake.set_default(Reply(usage=(100, 100)))
    Path("moa.yaml").write_text(
        """
proposal_layers:
  - neurons:
    - {model: "meta-llama/A", input_cost_per_token: 0.00001, output_cost_per_token: 0.00001}
aggregation_layer:
  model: "meta-llama/AGG"
  input_cost_per_token: 0.00001
  output_cost_per_token: 0.00001
"""
    )  # $0.004 a query
    Path("in.jsonl").write_text("".join(json.dumps(f"q{i}") + "\n" for i in range(20)))
    args = ["batch", "in.jsonl", "-o", output, "-c", "moa.yaml", "--no-progress"]
    result = CliRunner().invoke(cli, [*args, "--concurrency", "1", "--max-cost", "0.01"])
    assert result.exit_code == 3, result.output
    assert "stopped at the spend cap: $0.012000 of --max-cost $0.01" in result.stderr
    assert "17 queries not started" in result.stderr
    rerun = CliRunner().invoke(cli, [*args, "--max-cost", "1"])
    assert rerun.exit_code == 0, rerun.output
    assert "3 already in" in rerun.stderr and "batch: 17 run" in rerun.stderr
