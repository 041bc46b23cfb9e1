"""The `vote` aggregator neuron, the LLM judges (1-10 and pairwise in both orders) and the
datasets registered through the `register_datasets` hook."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from moa import MixtureOfAgents
from moa.eval import EvalItem, load_dataset
from moa.eval.cache import CallCache
from moa.eval.data import dataset_registry
from moa.eval.judge import JudgeScorer, PairwiseJudgeScorer
from moa.hookspecs import RegisterDataset, hookimpl
from moa.plugins import register_plugin, unregister_plugin
from moa.testing import FakeNeurons, FakeProvider, RecordedRequest


def vote_mixture(
    build: Callable[..., MixtureOfAgents], answers: list[str], extract: str, **agg: Any
) -> MixtureOfAgents:
    neurons = [{"type": "fake", "name": f"n{i}", "default": a} for i, a in enumerate(answers)]
    return build(
        {
            "proposal_layers": [{"neurons": neurons}],
            "aggregation_layer": {"type": "vote", "extract": extract, **agg},
        }
    )


async def test_vote_returns_the_majority_with_a_representatives_full_answer(
    build: Callable[..., MixtureOfAgents], moa_fake_neurons: FakeNeurons
) -> None:
    answers = ["I think 12. Answer: 12", "Answer: 14", "so, 12 in all. Answer: 12"]
    result = await vote_mixture(build, answers, "number").process("q")
    assert result.content == "I think 12. Answer: 12"  # the first answer that voted 12
    assert result.aggregator.cost == 0.0 and result.aggregator.usage.total_tokens == 0  # type: ignore[union-attr]


async def test_vote_weights_and_ties(
    build: Callable[..., MixtureOfAgents], moa_fake_neurons: FakeNeurons
) -> None:
    tie = await vote_mixture(build, ["Answer: B", "Answer: C"], "choice").process("q")
    assert tie.content == "Answer: B"  # a tie goes to the answer given first
    heavy = build(
        {
            "proposal_layers": [
                {"neurons": [
                    {"type": "fake", "name": "a", "default": "Answer: B"},
                    {"type": "fake", "name": "b", "default": "Answer: B"},
                    {"type": "fake", "name": "c", "default": "Answer: C", "weight": 3},
                ]}
            ],
            "aggregation_layer": {"type": "vote", "extract": "choice"},
        }
    )  # fmt: skip
    assert (await heavy.process("q")).content == "Answer: C"
    none = await vote_mixture(build, ["no idea", "hmm"], "number").process("q")
    assert none.content == "no idea"  # nothing to count: the first answer


def _judge_reply(request: RecordedRequest) -> str:
    text = request.last_user or ""
    if "Rate the answer" in text:
        return "Decent. Rating: [[7]]" if "Paris" in text else "Rating: bad"
    return "Explanation... [[A]]"  # a judge that always prefers the first position


@pytest.fixture
def judge_provider(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> FakeProvider:
    from tests.conftest import CANARY_KEY

    monkeypatch.setenv("BASE_URL", fake.base_url)
    monkeypatch.setenv("PROVIDER_API_KEY", CANARY_KEY)
    fake.respond_with("m/judge", _judge_reply)
    return fake


def test_judge_rates_1_to_10_and_records_parse_failures(judge_provider: FakeProvider) -> None:
    scorer = JudgeScorer(judge="m/judge")
    item = EvalItem(1, "Capital of France?", {"answer": "Paris"})

    async def go() -> Any:
        try:
            return (
                await scorer.score("It is Paris.", item),
                await scorer.score("London", EvalItem(2, "Capital of France?")),
            )
        finally:
            await scorer.aclose()

    good, unparsed = asyncio.run(go())
    assert (good.value, good.extracted) == (7.0, "7")
    assert unparsed.value is None and "judge reply not parsed" in (unparsed.note or "")
    prompt = judge_provider.requests_for("m/judge")[0].last_user or ""
    assert "[Reference answer]\nParis" in prompt and "It is Paris." in prompt


def test_pairwise_judge_asks_both_orders_and_cancels_position_bias(
    judge_provider: FakeProvider, tmp_path: Any
) -> None:
    cache = CallCache(tmp_path / "calls.sqlite")
    scorer = PairwiseJudgeScorer(judge="m/judge", cache=cache)
    item = EvalItem(1, "Say hi {user_query}")  # braces in data are left alone

    async def go() -> Any:
        try:
            return await scorer.score("SYSTEM ANSWER", item, baseline="BASELINE ANSWER")
        finally:
            await scorer.aclose()

    score = asyncio.run(go())
    # The judge always says [[A]]: the system wins once and loses once, a tie on average.
    assert score.value == 0.5
    assert score.note == "system first: A; baseline first: A"
    first, second = (r.last_user or "" for r in judge_provider.requests_for("m/judge"))
    assert first.index("SYSTEM ANSWER") < first.index("BASELINE ANSWER")
    assert second.index("BASELINE ANSWER") < second.index("SYSTEM ANSWER")
    assert "Say hi {user_query}" in first
    # Judging again comes from the cache.
    scorer = PairwiseJudgeScorer(judge="m/judge", cache=cache)
    asyncio.run(go())
    assert len(judge_provider.requests_for("m/judge")) == 2


def test_pairwise_judge_that_prefers_the_system_in_both_orders(
    judge_provider: FakeProvider,
) -> None:
    def fair(request: RecordedRequest) -> str:
        text = request.last_user or ""
        a = re.search(r"\[Assistant A\]\n(.*?)\n", text)
        return "[[A]]" if a and "GOOD" in a.group(1) else "[[B]]"

    judge_provider.respond_with("m/judge", fair)
    scorer = PairwiseJudgeScorer(judge="m/judge")

    async def go() -> Any:
        try:
            return await scorer.score("GOOD", EvalItem(1, "q"), baseline="meh")
        finally:
            await scorer.aclose()

    assert asyncio.run(go()).value == 1.0


class _Data:
    @hookimpl
    def register_datasets(self, register: RegisterDataset) -> None:
        register("tiny", lambda: [EvalItem("a", "what is 1+1?", {"answer": 2})], "two")


@pytest.fixture
def tiny_dataset() -> Iterator[None]:
    name = register_plugin(_Data(), name="test-eval-data")
    try:
        yield
    finally:
        unregister_plugin(name)


def test_a_plugin_registers_a_dataset(tiny_dataset: None) -> None:
    assert dataset_registry()["tiny"].plugin == "test-eval-data"
    assert load_dataset("tiny") == [EvalItem("a", "what is 1+1?", {"answer": 2})]


@pytest.mark.parametrize(
    ("name", "count", "field"),
    [("gsm8k", 100, "answer"), ("truthfulqa-mc1", 100, "answer"), ("hellaswag", 100, "answer"),
     ("humaneval", 164, "test")],
)  # fmt: skip
def test_builtin_datasets_read_the_installed_packages(name: str, count: int, field: str) -> None:
    items = load_dataset(name)
    assert len(items) == count
    assert all(field in item.fields for item in items)


def test_truthfulqa_choices_are_shuffled() -> None:
    # Upstream lists the right choice first; the loader must not leave it there.
    letters = {item.answer for item in load_dataset("truthfulqa-mc1")}
    assert len(letters) >= 3
