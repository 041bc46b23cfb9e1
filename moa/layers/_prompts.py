"""The pieces a layer puts into a prompt: the system turn and the numbered answers."""

from __future__ import annotations

from collections.abc import Sequence

from moa.neurons.base import ChatMessage, Reference

__all__ = ["format_responses", "system_then"]


def system_then(system: str | None, history: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    """A new message tuple: the system prompt (if any) followed by `history`."""
    if system:
        return ({"role": "system", "content": system}, *history)
    return tuple(history)


def format_responses(references: Sequence[Reference]) -> str:
    """Number the responses: `Response 1:\\n<text>` blocks separated by blank lines."""
    return "\n\n".join(f"Response {i}:\n{ref.text}" for i, ref in enumerate(references, 1))
