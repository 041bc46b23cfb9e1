"""Token usage per call, per layer and per run, and cost from litellm's local cost map."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from moa import Completed, MixtureOfAgents, MoAResult
from moa.neurons.llm import load_litellm
from moa.testing import FakeProvider, Reply

Build = Callable[..., MixtureOfAgents]

CONFIG = """
proposal_layers:
  - neurons: [{model: "m/a"}, {model: "m/b"}]
  - neurons: [{model: "m/c"}]
aggregation_layer: {model: "m/agg"}
"""
REPORTED = {"m/a": (11, 3), "m/b": (13, 5), "m/c": (17, 7), "m/agg": (19, 2)}


async def run(moa: MixtureOfAgents, streaming: bool) -> MoAResult:
    if not streaming:
        return await moa.process("q")
    events = [e async for e in moa.stream("q")]
    assert isinstance(events[-1], Completed)
    return events[-1].result


@pytest.mark.parametrize("streaming", [False, True], ids=["process", "stream"])
async def test_usage_totals_equal_what_the_provider_reported(
    fake: FakeProvider, build: Build, streaming: bool
) -> None:
    for model, usage in REPORTED.items():
        fake.script(model, Reply(content=f"{model} says two words", usage=usage))
    result = await run(build(CONFIG), streaming)
    by_model = {n.model: n.usage for n in result.neurons}
    assert {m: (u.prompt_tokens, u.completion_tokens) for m, u in by_model.items() if u} == REPORTED
    assert result.layers[0].usage.prompt_tokens == 11 + 13
    assert result.layers[0].usage.completion_tokens == 3 + 5
    assert result.usage.prompt_tokens == sum(p for p, _ in REPORTED.values())
    assert result["usage"].completion_tokens == sum(c for _, c in REPORTED.values())
    assert result.model_dump()["layers"][0]["usage"] == {"prompt_tokens": 24, "completion_tokens": 8}


@pytest.mark.parametrize("streaming", [False, True], ids=["process", "stream"])
async def test_usage_the_provider_did_not_report_is_counted_by_litellm(
    fake: FakeProvider, build: Build, streaming: bool
) -> None:
    fake.set_default(Reply(content="four words of answer", usage=(0, 0)))
    config = "proposal_layers: [{neurons: [{model: m/a}]}]\naggregation_layer: {model: m/agg}"
    result = await run(build(config), streaming)
    litellm = load_litellm()
    (request,) = fake.requests_for("m/agg")
    prompt = litellm.token_counter(model="openai/m/agg", messages=request.messages)
    completion = litellm.token_counter(model="openai/m/agg", text="four words of answer")
    assert result.aggregator.usage is not None
    assert (result.aggregator.usage.prompt_tokens, result.aggregator.usage.completion_tokens) == (
        prompt,
        completion,
    )
    assert completion > 0


@pytest.mark.parametrize("streaming", [False, True], ids=["process", "stream"])
async def test_cost_of_a_known_model_matches_litellm(
    fake: FakeProvider, build: Build, streaming: bool
) -> None:
    fake.set_default(Reply(content="a priced answer", usage=(1234, 567)))
    config = f"""
    proposal_layers: [{{neurons: [{{model: openai/gpt-4o-mini, base_url: "{fake.base_url}"}}]}}]
    aggregation_layer: {{model: openai/gpt-4o-mini, base_url: "{fake.base_url}"}}
    """
    result = await run(build(config), streaming)
    litellm = load_litellm()
    prompt_cost, completion_cost = litellm.cost_per_token(
        model="gpt-4o-mini", prompt_tokens=1234, completion_tokens=567
    )
    # the price litellm lists for gpt-4o-mini, computed independently
    info = litellm.get_model_info("gpt-4o-mini")
    listed = 1234 * info["input_cost_per_token"] + 567 * info["output_cost_per_token"]
    assert prompt_cost + completion_cost == pytest.approx(listed)
    for call in result.neurons:
        assert call.cost == pytest.approx(prompt_cost + completion_cost)
    assert result.layers[0].cost == pytest.approx(prompt_cost + completion_cost)
    assert result.cost == pytest.approx(2 * (prompt_cost + completion_cost))
    assert result["cost"] == result.cost


async def test_unknown_models_cost_none_not_zero(fake: FakeProvider, build: Build) -> None:
    result = await build(CONFIG).process("q")
    assert all(call.cost is None for call in result.neurons)
    assert result.layers[0].cost is None
    assert result.cost is None
    assert result.usage.total_tokens > 0  # usage is still known


async def test_config_prices_private_models(fake: FakeProvider, build: Build) -> None:
    fake.set_default(Reply(usage=(1000, 100)))
    config = """
    proposal_layers:
      - neurons:
        - {model: m/private, input_cost_per_token: 0.000002, output_cost_per_token: 0.00001}
        - {model: m/unpriced}
    aggregation_layer: {model: m/agg, input_cost_per_token: 0.000001, output_cost_per_token: 0}
    """
    result = await build(config).process("q")
    private, unpriced = result.layers[0].neurons
    assert private.cost == pytest.approx(1000 * 0.000002 + 100 * 0.00001)
    assert unpriced.cost is None
    assert result.aggregator.cost == pytest.approx(1000 * 0.000001)
    assert result.cost is None  # one answer has no price: no made-up total


async def test_failed_calls_do_not_make_the_total_unknown(fake: FakeProvider, build: Build) -> None:
    fake.set_default(Reply(usage=(10, 10)))
    fake.script("m/broken", Reply(status=500))
    config = """
    proposal_layers:
      - neurons:
        - {model: m/ok, input_cost_per_token: 0.5, output_cost_per_token: 0.5}
        - {model: m/broken}
    aggregation_layer: {model: m/agg, input_cost_per_token: 0.1, output_cost_per_token: 0.1}
    """
    result = await build(config).process("q")
    assert result.layers[0].neurons[1].error_type == "ProviderError"
    assert result.cost == pytest.approx(10.0 + 2.0)
