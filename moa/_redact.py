"""Masking secrets in text that comes from upstream, before moa keeps or shows any of it.

Every configured secret is masked, not only the key of the call that failed: keys moa has
resolved (`remember()`: each neuron's key, the fast path's key, the server's key,
`PROVIDER_API_KEY`) and, from when settings are first read (`remember_environment()`), the
value of every environment variable whose name ends in `KEY`, `TOKEN`, `SECRET` or
`PASSWORD` (`OPENAI_API_KEY`, `MOA_SERVER_API_KEY`, a neuron's `api_key_env`...). Values
shorter than `MIN_SECRET_LENGTH` are not treated as secrets (placeholders such as `EMPTY` or
`none` would mask ordinary words).

`clip()` masks *then* cuts, so a key across the cut never leaves its first characters;
`StreamRedactor` masks a text that arrives in pieces, holding back a piece's end while it
could still be the start of a key.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable

__all__ = [
    "MASK",
    "MIN_SECRET_LENGTH",
    "StreamRedactor",
    "clip",
    "redact",
    "remember",
    "remember_environment",
    "secrets",
]

MASK = "***"
MIN_SECRET_LENGTH = 8
_SECRET_NAME = re.compile(r"(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET|PASSWORD)$", re.IGNORECASE)
_known: set[str] = set()
_ordered: tuple[str, ...] = ()  # _known, longest first (so a key containing another goes whole)
_lock = threading.Lock()


def remember(*values: str | None) -> None:
    """Treat each value as a secret from now on, in this process."""
    global _ordered
    new = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH} - _known
    if new:
        with _lock:
            _known.update(new)
            _ordered = tuple(sorted(_known, key=len, reverse=True))


def remember_environment() -> None:
    """Remember the value of every environment variable named like a secret."""
    remember(*(v for k, v in os.environ.items() if _SECRET_NAME.search(k)))


def secrets(extra: Iterable[str | None] = ()) -> tuple[str, ...]:
    """Every secret to mask now (`extra` too), longest first."""
    more = [v for v in extra if v and len(v) >= MIN_SECRET_LENGTH and v not in _known]
    if not more:
        return _ordered
    return tuple(sorted((*_ordered, *set(more)), key=len, reverse=True))


def redact(text: str, extra: Iterable[str | None] = ()) -> str:
    """`text` with every secret (see the module docstring, and `extra`) replaced by `***`."""
    for secret in secrets(extra):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def clip(text: str, limit: int, extra: Iterable[str | None] = ()) -> str:
    """`text` masked, then cut to `limit` characters (`…` marks a cut)."""
    text = redact(text, extra)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StreamRedactor:
    """Masks a text that arrives in pieces: `feed()` returns what is safe to show so far,
    holding back an end that could be the start of a secret; `flush()` returns the rest once
    the text is complete. A text that fails half-way is simply not flushed."""

    __slots__ = ("_held", "_secrets")

    def __init__(self, extra: Iterable[str | None] = ()) -> None:
        self._secrets = secrets(extra)
        self._held = ""

    def feed(self, piece: str) -> str:
        if not self._secrets:
            return piece
        text = self._held + piece
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        keep = self._partial_length(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _partial_length(self, text: str) -> int:
        """Length of the longest end of `text` that is the start of a secret."""
        longest = 0
        for secret in self._secrets:
            at = text.find(secret[0], max(0, len(text) - len(secret) + 1))
            while at != -1 and len(text) - at > longest:
                if secret.startswith(text[at:]):
                    longest = len(text) - at
                    break
                at = text.find(secret[0], at + 1)
        return longest
