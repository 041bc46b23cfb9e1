"""The MoA semantics we promise (DESIGN.md), each through litellm over HTTP to the fake provider."""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Callable

import pytest

from moa import (
    AggregationFailed,
    AllNeuronsFailed,
    MixtureOfAgents,
    NeuronError,
    ProviderError,
    QueryError,
)
from moa.neurons.base import Reference
from moa.testing import FakeProvider, Reply

Build = Callable[..., MixtureOfAgents]

TWO_LAYERS = """
proposal_layers:
  - neurons:
    - {model: "meta-llama/A", prompt: "SYS-A", weight: 1}
    - {model: "mistralai/B", prompt: "SYS-B", weight: 3}
    - {model: "Qwen/C", prompt: "SYS-C", weight: 2}
  - neurons:
    - {model: "Qwen/L2", prompt: "SYS-L2"}
aggregation_layer:
  model: "meta-llama/AGG"
  prompt: "SYS-AGG"
"""


def only(fake: FakeProvider, model: str) -> str:
    (request,) = fake.requests_for(model)
    return "\n".join(str(m["content"]) for m in request.messages)


async def test_each_prompt_is_sent_as_the_system_message(fake: FakeProvider, build: Build) -> None:
    await build(TWO_LAYERS).process("q?")
    for model, system in [
        ("meta-llama/A", "SYS-A"),
        ("mistralai/B", "SYS-B"),
        ("Qwen/L2", "SYS-L2"),
        ("meta-llama/AGG", "SYS-AGG"),
    ]:
        (request,) = fake.requests_for(model)
        assert request.messages[0]["role"] == "system"
        assert request.messages[0]["content"].startswith(system)
        assert request.messages[-1]["role"] == "user"


async def test_layer_k_sees_every_survivor_of_layer_k_minus_1(
    fake: FakeProvider, build: Build
) -> None:
    fake.script("meta-llama/A", "alpha-answer")
    fake.script("mistralai/B", "beta-answer")
    fake.script("Qwen/C", Reply(status=500))
    await build(TWO_LAYERS).process("q?")
    system = fake.requests_for("Qwen/L2")[0].system or ""
    assert "alpha-answer" in system and "beta-answer" in system
    assert "answer from Qwen/C" not in system  # the failed neuron is not replaced by anything
    assert system.index("beta-answer") < system.index("alpha-answer")  # weight 3 before 1
    # layer 1 neurons saw no references
    assert "Responses from models" not in (fake.requests_for("meta-llama/A")[0].system or "")


async def test_aggregator_gets_query_all_survivors_and_normalised_weights(
    fake: FakeProvider, build: Build
) -> None:
    config = """
    proposal_layers:
      - neurons:
        - {model: "m/low", weight: 1}
        - {model: "m/high", weight: 3}
    aggregation_layer:
      model: "m/agg"
      aggregation_prompt: "Q={user_query}|R={responses}|W={response_weights}"
    """
    fake.script("m/low", "LOW-TEXT")
    fake.script("m/high", "HIGH-TEXT")
    result = await build(config).process("What now?")
    prompt = fake.requests_for("m/agg")[0].last_user or ""
    assert prompt.startswith("Q=What now?|R=")
    assert prompt.index("HIGH-TEXT") < prompt.index("LOW-TEXT")  # ordered by weight
    assert "Response 1: 0.750" in prompt and "Response 2: 0.250" in prompt
    assert result.aggregated == ("proposal_layers[0].neurons[1]", "proposal_layers[0].neurons[0]")


async def test_weight_zero_excludes_the_answer_but_keeps_it_in_the_trace(
    fake: FakeProvider, build: Build
) -> None:
    config = """
    proposal_layers:
      - neurons:
        - {model: "m/zero", weight: 0}
        - {model: "m/one"}
    aggregation_layer: {model: "m/agg"}
    """
    fake.script("m/zero", "ZERO-TEXT")
    result = await build(config).process("q")
    assert "ZERO-TEXT" not in (fake.requests_for("m/agg")[0].last_user or "")
    assert result.layers[0].neurons[0].text == "ZERO-TEXT"
    assert "Response 1: 1.000" in (fake.requests_for("m/agg")[0].last_user or "")


async def test_annotator_runs_and_its_rewrite_is_what_layers_see(
    fake: FakeProvider, build: Build
) -> None:
    config = """
    use_annotator: true
    annotator: {model: "m/annot", temperature: 0.2}
    proposal_layers:
      - neurons: [{model: "m/p"}]
    aggregation_layer:
      model: "m/agg"
      aggregation_prompt: "{user_query} :: {responses}"
    """
    fake.script("m/annot", "REWRITTEN QUERY")
    result = await build(config).process("orig query")
    annot = fake.requests_for("m/annot")[0]
    assert annot.system and "Rewrite" in annot.system and annot.last_user == "orig query"
    assert fake.requests_for("m/p")[0].last_user == "REWRITTEN QUERY"
    assert (fake.requests_for("m/agg")[0].last_user or "").startswith("REWRITTEN QUERY ::")
    assert result.query == "orig query" and result.annotated_query == "REWRITTEN QUERY"
    assert result.annotator is not None and result.annotator.ok


async def test_failed_annotator_falls_back_to_the_original_query(
    fake: FakeProvider, build: Build
) -> None:
    config = """
    use_annotator: true
    annotator: {model: "m/annot"}
    proposal_layers: [{neurons: [{model: "m/p"}]}]
    aggregation_layer: {model: "m/agg"}
    """
    fake.script("m/annot", Reply(status=503))
    result = await build(config).process("orig query")
    assert fake.requests_for("m/p")[0].last_user == "orig query"
    assert result.annotated_query is None
    assert result.annotator is not None and result.annotator.error_type == "ProviderError"


async def test_annotator_off_means_no_annotator_call(fake: FakeProvider, build: Build) -> None:
    config = """
    use_annotator: false
    annotator: {model: "m/annot"}
    proposal_layers: [{neurons: [{model: "m/p"}]}]
    aggregation_layer: {model: "m/agg"}
    """
    await build(config).process("q")
    assert fake.requests_for("m/annot") == []


async def test_failed_neuron_is_excluded_and_recorded(fake: FakeProvider, build: Build) -> None:
    config = """
    proposal_layers:
      - neurons: [{model: "m/ok"}, {model: "m/bad"}]
    aggregation_layer: {model: "m/agg"}
    """
    fake.script("m/bad", Reply(status=400, error_message="nope"))
    result = await build(config).process("q")
    bad = result.layers[0].neurons[1]
    assert bad.text is None and bad.error_type == "ProviderError" and bad.status_code == 400
    assert "nope" in (bad.error or "")
    prompt = fake.requests_for("m/agg")[0].last_user or ""
    assert "answer from m/ok" in prompt and "Response 2" not in prompt
    assert "did not generate" not in prompt.lower()
    assert result.aggregated == ("proposal_layers[0].neurons[0]",)


async def test_all_neurons_failing_raises_with_every_cause(
    fake: FakeProvider, build: Build
) -> None:
    config = """
    proposal_layers:
      - neurons: [{model: "m/x"}]
      - neurons: [{model: "m/a"}, {model: "m/b"}]
    aggregation_layer: {model: "m/agg"}
    """
    fake.script("m/a", Reply(status=500))
    fake.script("m/b", Reply(status=400))
    with pytest.raises(AllNeuronsFailed) as caught:
        await build(config).process("q")
    error = caught.value
    assert isinstance(error, ExceptionGroup)
    assert error.layer == "proposal_layers[1]"
    assert sorted(e.status_code or 0 for e in error.exceptions if isinstance(e, NeuronError)) == [
        400,
        500,
    ]
    assert all(isinstance(e, ProviderError) for e in error.exceptions)
    assert [layer.name for layer in error.layers] == ["proposal_layers[0]", "proposal_layers[1]"]
    assert error.layers[0].neurons[0].text == "answer from m/x"  # what was paid for is kept
    assert fake.requests_for("m/agg") == []


async def test_aggregator_failure_keeps_the_proposals(fake: FakeProvider, build: Build) -> None:
    config = """
    proposal_layers: [{neurons: [{model: "m/p1"}, {model: "m/p2"}]}]
    aggregation_layer: {model: "m/agg"}
    """
    fake.script("m/agg", Reply(status=500))
    with pytest.raises(AggregationFailed) as caught:
        await build(config).process("q")
    assert caught.value.proposals == ["answer from m/p1", "answer from m/p2"]
    assert isinstance(caught.value.cause, ProviderError)


async def test_neurons_of_a_layer_run_concurrently(fake: FakeProvider, build: Build) -> None:
    config = """
    proposal_layers:
      - neurons: [{model: "m/a"}, {model: "m/b"}, {model: "m/c"}]
    aggregation_layer: {model: "m/agg"}
    """
    for model in ("m/a", "m/b", "m/c"):
        fake.script(model, Reply(latency=0.3))
    await build(config).process("q")
    layer = [r for r in fake.requests if r.model in {"m/a", "m/b", "m/c"}]
    assert len(layer) == 3
    # every request arrived before any finished: they overlapped on the server
    assert max(r.started for r in layer) < min(r.finished or 0 for r in layer)
    aggregator = fake.requests_for("m/agg")[0]
    assert aggregator.started >= max(r.finished or 0 for r in layer)


async def test_max_concurrency_limits_requests_in_flight(fake: FakeProvider, build: Build) -> None:
    config = """
    max_concurrency: 1
    proposal_layers:
      - neurons: [{model: "m/a"}, {model: "m/b"}]
    aggregation_layer: {model: "m/agg"}
    """
    fake.script("m/a", Reply(latency=0.1))
    fake.script("m/b", Reply(latency=0.1))
    await build(config).process("q")
    a, b = fake.requests_for("m/a")[0], fake.requests_for("m/b")[0]
    first, second = sorted([a, b], key=lambda r: r.started)
    assert second.started >= (first.finished or 0)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("just one", [("user", "just one")]),
        (
            ["turn 1", "turn 2", "turn 3"],
            [("user", "turn 1"), ("user", "turn 2"), ("user", "turn 3")],
        ),
        (
            [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "why?"},
            ],
            [("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "why?")],
        ),
    ],
)
async def test_three_query_shapes(
    fake: FakeProvider, build: Build, query: object, expected: list[tuple[str, str]]
) -> None:
    config = """
    proposal_layers: [{neurons: [{model: "m/p", prompt: "P"}]}]
    aggregation_layer: {model: "m/agg"}
    """
    before = copy.deepcopy(query)
    result = await build(config).process(query)  # type: ignore[arg-type]
    sent = [(m["role"], m["content"]) for m in fake.requests_for("m/p")[0].messages]
    assert sent == [("system", "P"), *expected]
    assert query == before  # the caller's input is not mutated
    assert result.query == expected[-1][1]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        [],
        [1, 2],
        [{"role": "user"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        [{"role": "wizard", "content": "x"}],
        42,
    ],
)
async def test_bad_queries_raise_query_error(build: Build, bad: object) -> None:
    with pytest.raises(QueryError):
        await build("""
        proposal_layers: [{neurons: [{model: "m/p"}]}]
        aggregation_layer: {model: "m/agg"}
        """).process(bad)  # type: ignore[arg-type]


async def test_braces_in_query_and_model_text_are_left_alone(
    fake: FakeProvider, build: Build
) -> None:
    config = """
    proposal_layers: [{neurons: [{model: "m/p", prompt: "Sys {0} {user_query}"}]}]
    aggregation_layer:
      model: "m/agg"
      aggregation_prompt: "Q: {user_query} R: {responses} W: {response_weights} keep {this} and {0}"
    """
    fake.script("m/p", "model says {user_query} and {responses} and {__class__}")
    query = "What is {__class__} and {0} and {response_weights}?"
    await build(config).process(query)
    assert fake.requests_for("m/p")[0].system == "Sys {0} {user_query}"
    prompt = fake.requests_for("m/agg")[0].last_user or ""
    assert prompt.startswith(
        f"Q: {query} R: Response 1:\nmodel says {{user_query}} and {{responses}}"
    )
    assert prompt.endswith("W: Response 1: 1.000 keep {this} and {0}")


def refs(n: int) -> list[Reference]:
    return [
        Reference(text=f"t{i}", weight=float(i + 1), label=f"m{i}", path=f"p{i}") for i in range(n)
    ]


def test_dropout_never_empties_and_does_not_mutate(build: Build) -> None:
    moa = build("""
    proposal_layers: [{neurons: [{model: "m/p"}]}]
    aggregation_layer: {model: "m/agg", dropout_rate: 0.99, shuffle: true}
    """)
    given = refs(4)
    before = list(given)
    sizes = [len(moa.aggregation.select(given, random.Random(seed))) for seed in range(300)]
    assert min(sizes) >= 1
    assert given == before


def test_seeded_shuffle_and_dropout_are_reproducible(build: Build) -> None:
    moa = build("""
    proposal_layers: [{neurons: [{model: "m/p"}]}]
    aggregation_layer: {model: "m/agg", dropout_rate: 0.3, shuffle: true}
    """)
    orders = {
        tuple(r.path for r in moa.aggregation.select(refs(6), random.Random(s))) for s in range(30)
    }
    assert len(orders) > 5  # shuffle and dropout really vary with the seed
    for seed in range(10):
        first = moa.aggregation.select(refs(6), random.Random(seed))
        assert first == moa.aggregation.select(refs(6), random.Random(seed))


async def test_config_seed_gives_the_same_aggregation_prompt_each_run(
    fake: FakeProvider, build: Build
) -> None:
    moa = build("""
    seed: 7
    proposal_layers:
      - neurons: [{model: "m/a"}, {model: "m/b"}, {model: "m/c"}, {model: "m/d"}]
    aggregation_layer: {model: "m/agg", dropout_rate: 0.4, shuffle: true}
    """)
    results = [await moa.process("q") for _ in range(3)]
    prompts = [r.last_user for r in fake.requests_for("m/agg")]
    assert len(set(prompts)) == 1
    assert len({r.aggregated for r in results}) == 1


async def test_result_fields_timing_and_usage(fake: FakeProvider, build: Build) -> None:
    moa = build(TWO_LAYERS)
    result = await moa.process("How are you today?")
    assert result["content"] == result.content == "answer from meta-llama/AGG"
    assert result["response_times"] == result.response_times
    assert set(result.response_times) == {
        "proposal_layers[0].neurons[0] meta-llama/A",
        "proposal_layers[0].neurons[1] mistralai/B",
        "proposal_layers[0].neurons[2] Qwen/C",
        "proposal_layers[1].neurons[0] Qwen/L2",
        "aggregation_layer meta-llama/AGG",
    }
    assert result["total_completion_time"] >= max(result.response_times.values())
    assert [n.model for n in result.neurons][-1] == "meta-llama/AGG"
    sent = [r.body for r in fake.requests]
    assert all(body is not None for body in sent)
    # usage summed over every call equals what the provider reported (the fake counts words)
    assert result.usage.completion_tokens == 3 * len(sent)
    assert result["usage"].prompt_tokens == sum(
        n.usage.prompt_tokens for n in result.neurons if n.usage
    )
    assert "content" in result and result.get("missing") is None
    with pytest.raises(KeyError):
        result["nope"]
    assert result.model_dump()["aggregator"]["model"] == "meta-llama/AGG"


async def test_concurrent_process_calls_do_not_share_state(
    fake: FakeProvider, build: Build
) -> None:
    moa = build("""
    proposal_layers: [{neurons: [{model: "m/p"}]}]
    aggregation_layer: {model: "m/agg", aggregation_prompt: "{user_query}|{responses}"}
    """)
    fake.respond_with("m/agg", lambda req: f"agg:{(req.last_user or '').split('|')[0]}")
    results = await asyncio.gather(*(moa.process(f"question {i}") for i in range(8)))
    assert [r.content for r in results] == [f"agg:question {i}" for i in range(8)]


def test_process_sync_without_and_inside_a_running_loop(fake: FakeProvider, build: Build) -> None:
    moa = build("""
    proposal_layers: [{neurons: [{model: "m/p"}]}]
    aggregation_layer: {model: "m/agg"}
    """)
    assert moa.process_sync("q").content == "answer from m/agg"

    async def inside() -> str:
        return moa.process_sync("q").content

    assert asyncio.run(inside()) == "answer from m/agg"
