"""Context budgets: answers cut at a token boundary, lowest weight first, recorded in the trace;
and the load-time check of the aggregator's context window."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest

from moa import ContextWindowWarning, MixtureOfAgents, Reference
from moa.layers._budget import Budget, fit_references, marker
from moa.neurons.base import WordTokenizer
from moa.neurons.llm import LiteLLMTokenizer, load_litellm
from moa.testing import FakeProvider

Build = Callable[..., MixtureOfAgents]

HIGH = "The highest weighted answer explains Rayleigh scattering in full detail here."
MIDDLE = "The middle answer talks about the wavelength of light and the molecules of air."
LOW = "The lowest weighted answer mentions that sunsets are red for the same reason."


def proposals(fake: FakeProvider) -> None:
    fake.script("m/low", LOW)
    fake.script("m/high", HIGH)
    fake.script("m/middle", MIDDLE)


def tokens(text: str, model: str = "openai/m/agg") -> list[int]:
    return LiteLLMTokenizer(model).encode(text)


@pytest.mark.parametrize("shuffle", [False, True])
async def test_context_budget_keeps_the_highest_weight_answers(
    fake: FakeProvider, build: Build, shuffle: bool
) -> None:
    proposals(fake)
    budget = len(tokens(HIGH)) + 5  # all of HIGH, 5 tokens of MIDDLE, nothing of LOW
    result = await build(f"""
    seed: 3
    proposal_layers:
      - neurons:
        - {{model: m/low, weight: 1}}
        - {{model: m/high, weight: 3}}
        - {{model: m/middle, weight: 2}}
    aggregation_layer: {{model: m/agg, max_context_tokens: {budget}, shuffle: {str(shuffle).lower()}}}
    """).process("q")
    prompt = fake.requests_for("m/agg")[0].last_user or ""
    assert HIGH in prompt
    cut = LiteLLMTokenizer("openai/m/agg").decode(tokens(MIDDLE)[:5])
    assert cut + marker(len(tokens(MIDDLE)) - 5) in prompt and MIDDLE not in prompt
    assert "sunsets" not in prompt
    middle, low = result.truncations
    assert (middle.path, middle.kept_tokens, middle.original_tokens, middle.reason) == (
        "proposal_layers[0].neurons[2]", 5, len(tokens(MIDDLE)), "max_context_tokens"
    )
    assert low.path == "proposal_layers[0].neurons[0]" and low.dropped
    assert low.layer == middle.layer == "aggregation_layer"
    assert set(result.aggregated) == {"proposal_layers[0].neurons[1]", "proposal_layers[0].neurons[2]"}
    assert "Response 3" not in prompt  # the dropped answer is not numbered or weighted either


async def test_reference_budget_of_a_later_layer_is_in_its_trace(
    fake: FakeProvider, build: Build
) -> None:
    proposals(fake)
    result = await build("""
    proposal_layers:
      - neurons: [{model: m/high, weight: 2}, {model: m/low}]
      - neurons: [{model: meta-llama/Llama-3-70b-chat}]
        max_reference_tokens: 4
    aggregation_layer: {model: m/agg}
    """).process("q")
    system = fake.requests_for("meta-llama/Llama-3-70b-chat")[0].system or ""
    assert HIGH not in system and LOW not in system
    model = "openai/meta-llama/Llama-3-70b-chat"  # a llama-3 name: no tokenizer download
    for text in (HIGH, LOW):
        assert LiteLLMTokenizer(model).decode(tokens(text, model)[:4]) in system
    cuts = result.layers[1].truncations
    assert [(c.path, c.kept_tokens, c.reason) for c in cuts] == [
        ("proposal_layers[0].neurons[0]", 4, "max_reference_tokens"),
        ("proposal_layers[0].neurons[1]", 4, "max_reference_tokens"),
    ]
    assert result.truncations == cuts
    assert result.layers[0].truncations == ()


def ref(text: str, weight: float, path: str) -> Reference:
    return Reference(text=text, weight=weight, label=path, path=path)


def test_fit_never_leaves_nothing_and_keeps_order() -> None:
    refs = [ref("a b c d e f", 3, "x"), ref("g h i", 2, "y"), ref("j k", 1, "z")]
    kept, cuts = fit_references(refs, Budget(max_context_tokens=2), WordTokenizer(), layer="L")
    assert [r.path for r in kept] == ["x"]
    assert kept[0].text.startswith("a b ") and "4 more tokens" in kept[0].text
    assert [(c.path, c.kept_tokens) for c in cuts] == [("x", 2), ("y", 0), ("z", 0)]
    kept, cuts = fit_references(refs, Budget(max_context_tokens=9), WordTokenizer(), layer="L")
    assert [r.text for r in kept] == ["a b c d e f", "g h i"] and cuts[0].dropped
    kept, cuts = fit_references(refs, Budget(), WordTokenizer(), layer="L")
    assert kept == refs and cuts == []


def test_a_worst_case_over_the_context_window_warns_at_load(build: Build) -> None:
    load_litellm()
    window = load_litellm().get_model_info("gpt-4o-mini")["max_input_tokens"]
    config = f"""
    proposal_layers:
      - neurons:
        - {{model: m/a, max_tokens: {window // 2}}}
        - {{model: m/b, max_tokens: {window // 2}}}
    aggregation_layer: {{model: openai/gpt-4o-mini, base_url: "http://127.0.0.1:9/v1"}}
    """
    with pytest.warns(ContextWindowWarning, match="context window of"):
        build(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextWindowWarning)
        build(config.replace("base_url", f"max_context_tokens: {window // 2}, base_url"))
        build(config.replace("openai/gpt-4o-mini", "m/unknown"))  # window unknown: no guess
        build(config.replace(f"max_tokens: {window // 2}", "weight: 1"))  # m/a, m/b unbounded


async def test_the_check_also_runs_in_prepare(build: Build) -> None:
    load_litellm()
    config = """
    proposal_layers: [{neurons: [{model: m/a, max_tokens: 900000}]}]
    aggregation_layer: {model: openai/gpt-4o-mini, base_url: "http://127.0.0.1:9/v1"}
    """
    with pytest.warns(ContextWindowWarning):
        moa = build(config)
    moa._context_checked = False  # as if built before litellm was imported
    moa._prepared = False
    with pytest.warns(ContextWindowWarning):
        await moa.prepare()
    assert moa.check_context_window() is not None
