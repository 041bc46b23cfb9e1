"""Counting calls in time windows, from the fake provider's recorded request times."""

from __future__ import annotations

from collections.abc import Sequence


def max_in_window(starts: Sequence[float], window: float = 1.0) -> int:
    """The most calls that started within any window [t, t + `window`) (as a provider counts
    calls per second; evenly spaced calls at the limit give exactly the limit)."""
    times = sorted(starts)
    best = first = 0
    for last, at in enumerate(times):
        while at - times[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


def rate(starts: Sequence[float], *, warm_up: int = 10) -> float:
    """Calls per second from the start of call `warm_up` to the last. The first calls open
    their connections while later ones reuse them, so they reach the server late and
    bunched: they are left out."""
    times = sorted(starts)[warm_up:]
    return (len(times) - 1) / (times[-1] - times[0])
