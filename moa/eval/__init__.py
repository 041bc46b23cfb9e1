"""`moa eval`: does a mixture beat its own best single model on your data, and at what cost?

Rooms: `data` (items and where they come from), `scorers` / `code` / `judge` (grading),
`stats` (intervals and paired tests), `cache` (the sqlite call cache and the neuron wrapper),
`systems` (mixture, singles, Self-MoA, vote), `runner` (running a system over the items with
`moa batch`'s worker pool), `evaluate` (all of it together), `report` (table, JSON Lines,
HTML), `presets` (published structures), `builtins` (the built-in scorers and datasets,
registered through the `register_scorers` / `register_datasets` hooks).

Importing this package is light: it loads only `data` and `scorers`.
"""

from moa.eval.data import EvalDataError, EvalItem, load_dataset, load_file
from moa.eval.scorers import Score, Scorer, get_scorer

__all__ = [
    "EvalDataError",
    "EvalItem",
    "Score",
    "Scorer",
    "get_scorer",
    "load_dataset",
    "load_file",
]
