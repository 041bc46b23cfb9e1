"""Final-answer extraction from free text, shared by the `vote` aggregator and `moa eval`.

Each extractor takes a model's whole answer and returns the short answer it commits to (a
number, a choice letter, a normalised string), or None when there is none. They never raise on
any input: answers are model text, hostile or broken text included.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

__all__ = ["EXTRACTORS", "extract_choice", "extract_number", "normalize_text"]

_SPACES = re.compile(r"\s+")
_PUNCT_EDGES = re.compile(r"^[\W_]+|[\W_]+$")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_text(text: str) -> str | None:
    """Case-folded, NFKC, articles and edge punctuation removed, whitespace collapsed
    (SQuAD-style). None for an answer that is empty once normalised."""
    norm = unicodedata.normalize("NFKC", text).casefold()
    norm = _ARTICLES.sub(" ", norm)
    norm = _SPACES.sub(" ", norm).strip()
    norm = _PUNCT_EDGES.sub("", norm)
    return norm or None


# A number: optional sign, digits with optional thousands separators, optional decimals, or a
# bare decimal like .5; optional trailing percent is left to the caller.
_MINUS = "\u2212"  # U+2212, the typographic minus sign
_SIGN = "[-+" + _MINUS + "]?"
_NUMBER = _SIGN + r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|" + _SIGN + r"\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_BOXED = re.compile(r"\\boxed\s*\{([^{}]*)\}")
_MARKED = re.compile(
    r"(?:####|(?:final\s+answer|answer)\s*(?:is)?\s*[:=]?)\s*\**\s*\$?\s*(" + _NUMBER + r")",
    re.IGNORECASE,
)
_MAX_LEN = 200_000  # longer answers are cut: the extractors stay linear and bounded


def _canonical_number(raw: str) -> str | None:
    raw = raw.replace(",", "").replace(_MINUS, "-").lstrip("+")
    try:
        value = float(raw)
    except ValueError:
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(round(value, 9))


def extract_number(text: str) -> str | None:
    """The final numeric answer (GSM8K style), as a canonical string ("1234", "0.5").

    Looks, in order, at the last `\\boxed{...}`, the last `#### N` / `Answer: N` /
    `final answer is N` marker, then the last number in the text. Thousands separators,
    currency signs, units and trailing punctuation are ignored.
    """
    text = text[-_MAX_LEN:]
    boxed = _BOXED.findall(text)
    if boxed:
        found = _NUMBER_RE.findall(boxed[-1])
        if found:
            return _canonical_number(found[-1])
    marked = _MARKED.findall(text)
    if marked:
        return _canonical_number(marked[-1])
    found = _NUMBER_RE.findall(text)
    return _canonical_number(found[-1]) if found else None


# The letter itself is upper-case only: "the answer is a number" commits to nothing.
_CHOICE_MARKED = re.compile(
    r"(?i:answer|option|choice)\s*(?i:is)?\s*[:=]?\s*[\(\[]?\**\s*([A-J])\b(?![\w'])"
)
_CHOICE_ALONE = re.compile(r"^\W*\(?([A-J])(?:[.:)\]]|\s*$)")
_CHOICE_PAREN = re.compile(r"\(([A-J])\)")


def extract_choice(text: str) -> str | None:
    """The multiple-choice letter (A-J) an answer commits to, upper-case.

    Prefers an explicit `Answer: B` / `the answer is (C)`; else an answer that starts with the
    letter (`B.`, `(B)`, `B) ...`, a bare `B`); else the last parenthesised `(D)`.
    """
    text = text[-_MAX_LEN:]
    marked = _CHOICE_MARKED.findall(text)
    if marked:
        return str(marked[-1]).upper()
    alone = _CHOICE_ALONE.match(text.strip())
    if alone:
        return alone.group(1).upper()
    paren = _CHOICE_PAREN.findall(text)
    if paren:
        return str(paren[-1]).upper()
    return None


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "number": extract_number,
    "choice": extract_choice,
    "normalized": normalize_text,
    "exact": lambda text: text.strip() or None,
}
"""Extractors by name: what the `vote` aggregator's `extract` option and the scorers use."""
