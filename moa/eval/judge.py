"""LLM-judge scorers: `judge` grades 1-10 (MT-Bench style, against the item's reference
when it has one), `pairwise` compares an answer with the baseline's answer in both orders
(AlpacaEval style), so a judge that prefers a position cancels out.

The judge is any litellm model string or a mixture config file (`--judge MODEL|CONFIG`); its
calls go through the eval's call cache. A reply the scorer cannot parse gives no score
(never a made-up one) and the reply's start is kept in the item's note. Prompts are built by
concatenation: model text never goes through `str.format`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from moa.eval.cache import CallCache, instrument
from moa.eval.data import EvalItem
from moa.eval.scorers import Score, Scorer
from moa.mixture import MixtureOfAgents

__all__ = ["JudgeScorer", "PairwiseJudgeScorer", "judge_mixture"]

JUDGE_SYSTEM = (
    "You are an impartial judge of answers written by AI assistants. Judge helpfulness, "
    "correctness, relevance and depth. Be objective; the length of an answer is no merit."
)
_RATING = re.compile(r"\[\[\s*(10|[1-9](?:\.\d+)?)\s*\]\]")
_RATING_LOOSE = re.compile(r"(?i)rating\s*[:=]?\s*(10|[1-9](?:\.\d+)?)\b")
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def _conversation(query: Any) -> str:
    if isinstance(query, str):
        return query
    if isinstance(query, Sequence):
        turns = []
        for turn in query:
            if isinstance(turn, Mapping):
                turns.append(f"{turn.get('role', 'user')}: {turn.get('content', '')}")
            else:
                turns.append(f"user: {turn}")
        return "\n".join(turns)
    return str(query)


def judge_mixture(judge: str) -> MixtureOfAgents:
    """The judge as a mixture: a config file, or one model (temperature 0) passed through."""
    path = Path(judge)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return MixtureOfAgents.from_config(path)
    return MixtureOfAgents.from_config(
        {
            "proposal_layers": [
                {"neurons": [{"model": judge, "temperature": 0.0, "prompt": JUDGE_SYSTEM}]}
            ],
            "aggregation_layer": {"type": "vote", "extract": "exact"},
        }
    )


class _Judge(Scorer):
    binary = False

    def __init__(
        self, judge: str | MixtureOfAgents | None = None, cache: CallCache | None = None
    ) -> None:
        if judge is None:
            raise ValueError("the judge scorers need a judge: --judge MODEL_OR_CONFIG")
        self.moa = judge if isinstance(judge, MixtureOfAgents) else judge_mixture(judge)
        if cache is not None:
            instrument(self.moa, cache)

    async def ask(self, prompt: str) -> str:
        result = await self.moa.process(prompt)
        return result.content

    async def aclose(self) -> None:
        await self.moa.aclose()


class JudgeScorer(_Judge):
    """1-10 rating by the judge; with a reference answer the judge is shown it."""

    name = "judge"

    def prompt(self, answer: str, item: EvalItem) -> str:
        parts = ["[Question]\n", _conversation(item.query), "\n\n"]
        reference = item.fields.get("answer")
        if reference is not None:
            parts += ["[Reference answer]\n", str(reference), "\n\n"]
        parts += [
            "[The assistant's answer]\n", answer, "\n[End of the answer]\n\n",
            "Rate the answer on a scale of 1 to 10"
            + (", comparing it with the reference answer" if reference is not None else "")
            + ". Explain briefly, then give the rating strictly in this format: Rating: [[5]]",
        ]  # fmt: skip
        return "".join(parts)

    async def score(self, answer: str, item: EvalItem, *, baseline: str | None = None) -> Score:
        reply = await self.ask(self.prompt(answer, item))
        found = _RATING.findall(reply) or _RATING_LOOSE.findall(reply)
        if not found:
            return Score(None, None, f"judge reply not parsed: {reply[:200]!r}")
        rating = float(found[-1])
        return Score(rating, str(found[-1]), None)


class PairwiseJudgeScorer(_Judge):
    """Win rate against the baseline's answer: each item is judged twice, with the answers in
    both orders; a win counts 1, a tie 0.5, a loss 0, and the score is the mean of the two
    orders (a judge that always picks the first answer scores 0.5)."""

    name = "pairwise"
    pairwise = True

    def prompt(self, first: str, second: str, item: EvalItem) -> str:
        return "".join(
            [
                "Compare two assistants' answers to the user question below. Decide which is "
                "better; do not let their order or length sway you.\n\n[Question]\n",
                _conversation(item.query),
                "\n\n[Assistant A]\n", first, "\n[End of Assistant A]\n\n",
                "[Assistant B]\n", second, "\n[End of Assistant B]\n\n",
                "Explain briefly, then give your verdict strictly as [[A]] if A is better, "
                "[[B]] if B is better, or [[C]] for a tie.",
            ]
        )  # fmt: skip

    async def _verdict(self, first: str, second: str, item: EvalItem) -> str | None:
        reply = await self.ask(self.prompt(first, second, item))
        found = _VERDICT.findall(reply)
        return str(found[-1]) if found else None

    async def score(self, answer: str, item: EvalItem, *, baseline: str | None = None) -> Score:
        if baseline is None:
            return Score(None, None, "no baseline answer to compare with")
        forward = await self._verdict(answer, baseline, item)  # the system is A
        backward = await self._verdict(baseline, answer, item)  # the system is B
        points = []
        if forward is not None:
            points.append({"A": 1.0, "B": 0.0, "C": 0.5}[forward])
        if backward is not None:
            points.append({"A": 0.0, "B": 1.0, "C": 0.5}[backward])
        note = f"system first: {forward or 'unparsed'}; baseline first: {backward or 'unparsed'}"
        if not points:
            return Score(None, None, note)
        return Score(sum(points) / len(points), f"{forward or '?'}/{backward or '?'}", note)
