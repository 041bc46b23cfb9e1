"""The one adapter between a mixture and everything that shows its answer as it is made
(the CLI, the server, the litellm provider).

`events(moa, query)` is `moa.stream(query)` without its `StreamFailed` event: consumers get
`Token`s, progress events and one final `Completed`, and a failure arrives only as the
mixture's own `MoAError` (which `stream()` raises right after its error event), so it cannot
be handled twice or missed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from moa.events import MoAEvent, StreamFailed
from moa.mixture import MixtureOfAgents, Query

__all__ = ["events"]


async def events(moa: MixtureOfAgents, query: Query) -> AsyncGenerator[MoAEvent, None]:
    """The run of `moa` on `query`; closing this generator early cancels the run."""
    async with aclosing(moa.stream(query)) as upstream:
        async for event in upstream:
            if not isinstance(event, StreamFailed):
                yield event
