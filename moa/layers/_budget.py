"""Context budgets: cut the previous layer's answers to fit, lowest weight first.

`max_reference_tokens` caps each answer; `max_context_tokens` caps all of them together. An
answer that does not fit is cut at a token boundary of the receiving model's tokenizer and
`TRUNCATION_MARKER` is appended; one with no room left is left out. Every cut is recorded as a
`Truncation`. Token counts are the answers' own text: the markers and the prompt around the
answers are not counted.

Everything here may block (tokenizers load vocabularies, long texts take milliseconds to
encode): callers run it in a worker thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from moa.neurons.base import Neuron, Reference, Tokenizer, WordTokenizer
from moa.result import Truncation

__all__ = ["Budget", "context_window_problem", "fit_references", "marker"]

_Reason = Literal["max_reference_tokens", "max_context_tokens"]


def marker(omitted: int) -> str:
    """What replaces the cut end of an answer."""
    return f"\n[... truncated: {omitted} more tokens omitted]"


@dataclass(frozen=True)
class Budget:
    """A layer's limits on the references it is shown (None: no limit)."""

    max_reference_tokens: int | None = None
    max_context_tokens: int | None = None

    @property
    def active(self) -> bool:
        return self.max_reference_tokens is not None or self.max_context_tokens is not None


def fit_references(
    references: Sequence[Reference],
    budget: Budget,
    tokenizer: Tokenizer | None,
    *,
    layer: str,
) -> tuple[list[Reference], list[Truncation]]:
    """Apply `budget` to `references`, given highest priority (weight) first.

    Returns the references that remain, in the given order, and what was cut. The first
    reference always keeps at least its first token, so the result is never empty.
    """
    if not budget.active or not references:
        return list(references), []
    tokenizer = tokenizer if tokenizer is not None else WordTokenizer()
    encoded = [tokenizer.encode(ref.text) for ref in references]
    allowed = [len(tokens) for tokens in encoded]
    reasons: list[_Reason | None] = [None] * len(references)
    cap = budget.max_reference_tokens
    if cap is not None:
        for i, size in enumerate(allowed):
            if size > cap:
                allowed[i], reasons[i] = cap, "max_reference_tokens"
    if budget.max_context_tokens is not None:
        # Filling highest weight first is cutting lowest weight first.
        remaining = budget.max_context_tokens
        for i, size in enumerate(allowed):
            if size > remaining:
                allowed[i], reasons[i] = remaining, "max_context_tokens"
            remaining -= allowed[i]
    kept: list[Reference] = []
    cuts: list[Truncation] = []
    for ref, tokens, keep, reason in zip(references, encoded, allowed, reasons, strict=True):
        if reason is None:
            kept.append(ref)
            continue
        cuts.append(
            Truncation(
                layer=layer,
                path=ref.path,
                weight=ref.weight,
                original_tokens=len(tokens),
                kept_tokens=keep,
                reason=reason,
            )
        )
        if keep > 0:
            text = tokenizer.decode(tokens[:keep]) + marker(len(tokens) - keep)
            kept.append(dataclasses.replace(ref, text=text))
    return kept, cuts


def context_window_problem(
    aggregator: Neuron,
    proposers: Sequence[Neuron],
    budget: Budget,
    template: str,
) -> str | None:
    """Why the aggregator's worst-case prompt may not fit its context window, or None.

    The worst case: the aggregator's system prompt and aggregation template, plus every
    weighted answer of the last proposal layer at its longest (the proposer's `max_tokens`,
    else its model's maximum output), capped by the aggregator's budget. The query itself is
    not counted. Returns None when the window or an answer's longest length is unknown.
    """
    window = aggregator.token_limits().max_input_tokens
    if window is None:
        return None
    answers: list[int] = []
    for neuron in proposers:
        if neuron.weight <= 0:
            continue
        longest = neuron.token_limits().max_output_tokens
        if budget.max_reference_tokens is not None:
            longest = min(longest or budget.max_reference_tokens, budget.max_reference_tokens)
        if longest is None:
            return None
        answers.append(longest)
    references = sum(answers)
    if budget.max_context_tokens is not None:
        references = min(references, budget.max_context_tokens)
    tokenizer = aggregator.tokenizer() or WordTokenizer()
    fixed = len(tokenizer.encode((aggregator.config.prompt or "") + "\n" + template))
    per_answer = len(tokenizer.encode(f"Response 10:\n\n\nResponse 10: 0.000\n{marker(99999)}"))
    worst = references + fixed + per_answer * len(answers)
    if worst <= window:
        return None
    return (
        f"the aggregator ({aggregator.label}) may be sent about {worst} tokens before the "
        f"query, more than its context window of {window}: {len(answers)} answers of up to "
        f"{references} tokens in all. Set max_tokens on the last proposal layer's neurons, "
        "or max_reference_tokens / max_context_tokens on aggregation_layer."
    )
