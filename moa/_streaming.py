"""One adapter between a mixture and everything that shows its answer as it is made.

`events(moa, query)` yields `Token` (a piece of the answer), `Progress` (anything else the
mixture reports: layer started, neuron finished...) and finally one `Completed` with the whole
`MoAResult`. A failure is raised as the mixture's `MoAError`, never yielded.

It uses `MixtureOfAgents.stream()` when the mixture has one and otherwise runs `process()` and
reports its answer as one token, so the CLI and the server stream for real as soon as the
mixture can, with no change on their side.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

from moa.errors import MoAError
from moa.mixture import MixtureOfAgents, Query
from moa.result import MoAResult

__all__ = ["Completed", "Event", "Progress", "StreamError", "Token", "events"]


@dataclass(frozen=True)
class Token:
    """A piece of the final answer."""

    text: str
    kind: Literal["token"] = "token"


@dataclass(frozen=True)
class Completed:
    """The run finished; `result` is the whole trace."""

    result: MoAResult
    kind: Literal["completed"] = "completed"


@dataclass(frozen=True)
class Progress:
    """Any other event of the mixture (`kind` is e.g. `layer_finished`); `event` is the
    mixture's own event object."""

    kind: str
    event: Any


Event = Token | Completed | Progress


class StreamError(MoAError):
    """The mixture reported an error event and ended its stream without raising it.

    `error_type` is the name of the mixture's error and `layers` the layers that completed.
    """

    def __init__(
        self, message: str, *, error_type: str | None = None, layers: Sequence[Any] = ()
    ) -> None:
        self.error_type = error_type
        self.layers = tuple(layers)
        super().__init__(message)


async def events(moa: MixtureOfAgents, query: Query) -> AsyncGenerator[Event, None]:
    """The run of `moa` on `query` as `Token`s and `Progress`, then one `Completed`."""
    stream = getattr(moa, "stream", None)
    if stream is None:
        result = await moa.process(query)
        yield Token(result.content)
        yield Completed(result)
        return
    source = stream(query)
    if inspect.isawaitable(source):
        source = await source
    closing = aclosing(source) if hasattr(source, "aclose") else nullcontext(source)
    async with closing as upstream:
        async for event in upstream:
            kind = getattr(event, "kind", None)
            if kind == "token":
                yield Token(str(event.text))
            elif kind == "completed":
                yield Completed(event.result)
            elif kind == "error":
                error = StreamError(
                    str(getattr(event, "error", "the mixture failed")),
                    error_type=getattr(event, "error_type", None),
                    layers=getattr(event, "layers", None) or (),
                )
                # The mixture may raise its own, richer, error after this event.
                async for _ in upstream:
                    pass
                raise error
            else:
                yield Progress(str(kind), event)
