"""The llm neuron's internal transport interface: how one attempt reaches a provider.

`LLMNeuron.prepare()` picks one implementation per neuron, once:

- `DirectTransport` (`_direct`): OpenAI-compatible endpoints, called over moa's own pooled
  HTTP client with the URL, key and parameters litellm resolved once;
- `LiteLLMTransport` (`_litellm`): every other provider, through `litellm.acompletion`.

Each normalises its own responses into `Answer` / `Chunk` and maps its own failures into
`NeuronError`s through the one failure-kind table (`_upstream_errors.FailureKind`), passing
every upstream text through `_upstream_errors.upstream_text`. Anything else it raises is a
bug. The neuron adds its context (path, model), checks the content, counts and prices.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from moa.neurons.base import ChatMessage

__all__ = ["Answer", "Chunk", "Transport", "content", "tokens"]


@dataclass(frozen=True, slots=True)
class Answer:
    """One complete response: the first choice's text (None when the provider sent null or
    there was no choice, see `choices`; "" for a non-text content), usage as (prompt,
    completion) tokens if reported."""

    text: str | None
    choices: int
    usage: tuple[int, int] | None
    model: str | None


@dataclass(frozen=True, slots=True)
class Chunk:
    """One streamed chunk: its text delta (if any), usage (the include_usage chunk), the
    model and whether the first choice says it finished."""

    text: str | None
    usage: tuple[int, int] | None
    model: str | None
    finished: bool


class Transport(Protocol):
    """One attempt at a chat completion. `timeout_s` bounds the attempt (seconds, None: none)."""

    async def complete(
        self, messages: Sequence[ChatMessage], *, timeout_s: float | None
    ) -> Answer: ...

    def stream(
        self, messages: Sequence[ChatMessage], *, timeout_s: float | None
    ) -> AsyncIterator[Chunk]: ...


def tokens(prompt: object, completion: object) -> tuple[int, int] | None:
    """Reported usage, if it is usable (two ints, not both 0)."""
    if isinstance(prompt, int) and isinstance(completion, int) and prompt + completion > 0:
        return prompt, completion
    return None


def content(value: object) -> str | None:
    """A message's content as the neuron checks it: text, None for null, "" for other shapes."""
    return value if value is None or isinstance(value, str) else ""
