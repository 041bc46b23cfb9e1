"""Safe prompt templates: substitute a fixed set of `{name}` placeholders, touch nothing else.

User and model text is never passed through `str.format`: a query containing `{__class__}`
or `{0}` is sent exactly as typed, and text substituted in is never scanned again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = ["placeholders_in", "render"]

_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render(template: str, values: Mapping[str, str]) -> str:
    """Replace each `{name}` whose name is a key of `values`; leave every other brace alone.

    One pass over the template only, so braces inside the substituted values stay literal.
    """

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        return values[name] if name in values else match.group(0)

    return _NAME.sub(substitute, template)


def placeholders_in(template: str, names: Iterable[str]) -> set[str]:
    """Which of `names` appear as `{name}` in `template`."""
    wanted = set(names)
    return {m.group(1) for m in _NAME.finditer(template) if m.group(1) in wanted}
