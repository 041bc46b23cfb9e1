"""Layers: run neurons concurrently (`Layer`) and combine their answers (`AggregationLayer`).

The room also holds what layers put into prompts: safe templates (`_template`), the system
turn and numbered answers (`_prompts`) and context budgets (`_budget`). The package itself
imports nothing at import time, so the config models can use `_template` without pulling in
the layers (which import the config).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moa.layers.aggregation import AggregationLayer
    from moa.layers.layer import Layer

__all__ = ["AggregationLayer", "Layer"]

_HOMES = {"AggregationLayer": "moa.layers.aggregation", "Layer": "moa.layers.layer"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
