"""Scorers: how one answer to one item is graded.

A scorer turns `(answer, item)` into a `Score`: a value (1/0 for binary scorers, a mean-able
number otherwise; None when it could not grade, e.g. a judge's reply it could not parse), the
answer it extracted and a note. Built-in scorers are registered through the
`register_scorers` hook, exactly as a plugin's are; `get_scorer("regex:pattern=^4$")` builds
one with options.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from moa.eval.data import EvalDataError, EvalItem
from moa.extract import extract_choice, extract_number, normalize_text

__all__ = [
    "ChoiceScorer",
    "ContainsScorer",
    "ExactScorer",
    "NormalizedScorer",
    "NumberScorer",
    "RegexScorer",
    "Score",
    "Scorer",
    "get_scorer",
    "scorer_registry",
]


@dataclass(frozen=True)
class Score:
    """The grade of one answer. `value` None: not gradable (counted apart, never as 0)."""

    value: float | None
    extracted: str | None = None
    note: str | None = None


class Scorer(ABC):
    """Grades answers. `binary` scorers give 1 or 0 (accuracy, Wilson intervals, McNemar);
    others give scores whose mean is bootstrapped. `vote_extract` is the `vote` aggregator's
    `extract` for this scorer (how a majority vote counts answers as the same)."""

    name: ClassVar[str] = "scorer"
    binary: ClassVar[bool] = True
    pairwise: ClassVar[bool] = False
    vote_extract: ClassVar[str] = "normalized"

    def extract(self, answer: str) -> str | None:
        """The short answer this scorer reads from `answer` (for votes and reports)."""
        return normalize_text(answer)

    @abstractmethod
    async def score(self, answer: str, item: EvalItem, *, baseline: str | None = None) -> Score:
        """Grade `answer` to `item`; `baseline` is the baseline's answer (pairwise scorers)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the scorer holds (a judge's mixture)."""


def _references(item: EvalItem, field: str = "answer") -> list[Any]:
    ref = item.fields.get(field)
    if ref is None:
        raise EvalDataError(f"item {item.id!r} has no {field!r} for the scorer to compare with")
    return list(ref) if isinstance(ref, (list, tuple)) else [ref]


def _binary(ok: bool, extracted: str | None, note: str | None = None) -> Score:
    return Score(1.0 if ok else 0.0, extracted, note)


class ExactScorer(Scorer):
    """The answer, stripped, equals a reference (any of a list), stripped."""

    name = "exact"
    vote_extract = "exact"

    def extract(self, answer: str) -> str | None:
        return answer.strip() or None

    async def score(self, answer: str, item: EvalItem, *, baseline: str | None = None) -> Score:
        got = self.extract(answer)
        return _binary(any(got == str(r).strip() for r in _references(item)), got)


class NormalizedScorer(Scorer):
    """Equal after normalising case, Unicode, articles, punctuation and spaces."""

    name = "normalized"

    async def score(self, answer: str, item: EvalItem, *, baseline: str | None = None) -> Score:
        got = normalize_text(answer)
        return _binary(any(got == normalize_text(str(r)) for r in _references(item)), got)


class ContainsScorer(Scorer):
    """A reference (normalised) occurs in the answer (normalised)."""

    name = "contains"

    async def score(self, answer: str, item: EvalItem, *, baseline: str | None = None) -> Score:
        got = normalize_text(answer) or ""
        for ref in _references(item):
            want = normalize_text(str(ref))
            if want and want in got:
                return _binary(True, want)
        return _binary(False, None)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    found = extract_number(str(value))
    return float(found) if found is not None else None


class NumberScorer(Scorer):
    """The final number of the answer equals the reference's (GSM8K style). A reference may
    be a number or a worked solution ending in `#### N`; `tolerance` is relative."""

    name = "number"
    vote_extract = "number"

    def __init__(self, tolerance: float | str = 1e-6) -> None:
        self.tolerance = float(tolerance)

    def extract(self, answer: str) -> str | None:
        return extract_number(answer)

    async def score(self, answer: str, item: EvalItem, *, baseline: str | None = None) -> Score:
        got = extract_number(answer)
        if got is None:
            return _binary(False, None, "no number in the answer")
        value = float(got)
        for ref in _references(item):
            want = _as_number(ref)
            if want is not None and math.isclose(value, want, rel_tol=self.tolerance, abs_tol=1e-9):
                return _binary(True, got)
        return _binary(False, got)


class ChoiceScorer(Scorer):
    """The multiple-choice letter of the answer equals the reference (a letter, or a 0-based
    index into the item's choices)."""

    name = "choice"
    vote_extract = "choice"

    def extract(self, answer: str) -> str | None:
        return extract_choice(answer)

    async def score(self, answer: str, item: EvalItem, *, baseline: str | None = None) -> Score:
        got = extract_choice(answer)
        wants = set()
        for ref in _references(item):
            if isinstance(ref, int) and not isinstance(ref, bool):
                wants.add(chr(ord("A") + ref))
            else:
                wants.add(str(ref).strip().strip("()").upper())
        return _binary(got is not None and got in wants, got)


class RegexScorer(Scorer):
    """The answer matches a regular expression: the scorer's `pattern` option, else the
    item's `pattern` field (searched, case-insensitive unless `case=1`)."""

    name = "regex"

    def __init__(self, pattern: str | None = None, case: str | bool = False) -> None:
        self.flags = 0 if str(case).lower() in ("1", "true", "yes") else re.IGNORECASE
        try:
            self.pattern = re.compile(pattern, self.flags) if pattern is not None else None
        except re.error as exc:
            raise EvalDataError(f"regex scorer: invalid pattern {pattern!r}: {exc}") from None

    async def score(self, answer: str, item: EvalItem, *, baseline: str | None = None) -> Score:
        pattern = self.pattern
        if pattern is None:
            raw = item.fields.get("pattern")
            if not isinstance(raw, str):
                raise EvalDataError(f"item {item.id!r} has no 'pattern' for the regex scorer")
            try:
                pattern = re.compile(raw, self.flags)
            except re.error as exc:
                raise EvalDataError(f"item {item.id!r}: invalid pattern: {exc}") from None
        match = pattern.search(answer[-200_000:])
        return _binary(match is not None, match.group(0) if match else None)


ScorerFactory = Callable[..., Scorer]


def scorer_registry() -> dict[str, ScorerFactory]:
    """Every scorer registered through the `register_scorers` hook, by name."""
    from moa.plugins import get_plugin_manager

    found: dict[str, ScorerFactory] = {}
    owners: dict[str, str] = {}
    for impl in get_plugin_manager().hook.register_scorers.get_hookimpls():

        def register(name: str, factory: ScorerFactory, _plugin: str = impl.plugin_name) -> None:
            if name in found:
                raise EvalDataError(
                    f"scorer {name!r} is registered twice: by {owners[name]!r} and {_plugin!r}"
                )
            found[name] = factory
            owners[name] = _plugin

        impl.function(register=register)
    return found


def parse_scorer_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`"name:key=value,key2=value2"` -> ("name", {...}). A value may not contain a comma
    (a regex with one goes in the items' `pattern` field instead)."""
    name, _, rest = spec.partition(":")
    options: dict[str, str] = {}
    for part in filter(None, rest.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise EvalDataError(f"scorer option {part!r} in {spec!r} must be key=value")
        options[key.strip()] = value
    return name.strip(), options


def get_scorer(spec: str, **extra: Any) -> Scorer:
    """Build the scorer `spec` names (with its options); `extra` goes to its factory too
    (the judge's model)."""
    name, options = parse_scorer_spec(spec)
    registry = scorer_registry()
    factory = registry.get(name)
    if factory is None:
        known = ", ".join(sorted(registry))
        raise EvalDataError(f"unknown scorer {name!r}; registered scorers: {known}")
    try:
        return factory(**options, **extra)
    except TypeError as exc:
        raise EvalDataError(f"scorer {name!r}: {exc}") from None


BUILTIN_SCORERS: Sequence[type[Scorer]] = (
    ExactScorer,
    NormalizedScorer,
    ContainsScorer,
    NumberScorer,
    ChoiceScorer,
    RegexScorer,
)
