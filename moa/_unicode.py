"""Text that must leave the process as UTF-8: model answers, provider messages, ids.

A Python `str` may hold a lone surrogate (`"\\ud83d"`, half of an emoji) — `json.loads`
makes one from the escape `"\\ud83d"`, so any upstream answer or input line can carry it — and
such a string cannot be encoded as UTF-8. Every place where moa writes text for others (JSON
bodies, server-sent events, stdout, result files) goes through `scrub` / `json_bytes`, which
replace each lone surrogate by U+FFFD; a query that carries one is refused instead
(`lone_surrogate`), since the caller can fix it.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["json_bytes", "json_text", "lone_surrogate", "scrub"]


def lone_surrogate(text: str) -> int | None:
    """The position of the first lone surrogate in `text`, or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def scrub(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD (a valid pair is joined)."""
    if lone_surrogate(text) is None:
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def json_text(value: Any, **options: Any) -> str:
    """`json.dumps(value, ensure_ascii=False)` that always encodes as UTF-8."""
    return scrub(json.dumps(value, ensure_ascii=False, **options))


def json_bytes(value: Any, **options: Any) -> bytes:
    """`value` as UTF-8 JSON; lone surrogates in its strings become U+FFFD."""
    return json_text(value, **options).encode("utf-8")
