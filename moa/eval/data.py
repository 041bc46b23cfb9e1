"""Evaluation items and where they come from: files, Hugging Face datasets, plugins.

An item is a query (a string, a list of user turns or a chat history, as `moa batch` takes)
plus whatever its scorers need: `answer` (the reference), `tests`/`entry_point`/`prompt`
(the `code` scorer), `pattern` (`regex`), `choices`... Everything but `id` and `query` is kept
in `fields`.

Sources, by what `load_items()` is given:
- a `.jsonl`, `.json` (a list), `.csv` or `.parquet` file (Parquet needs pyarrow);
- `hf:NAME[:CONFIG][@SPLIT]`, a Hugging Face dataset (needs `datasets`), mapped with
  `query_field` / `answer_field`;
- a name registered through the `register_datasets` hook (`moa eval --dataset NAME`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moa.errors import MoAError

__all__ = [
    "DatasetInfo",
    "EvalDataError",
    "EvalItem",
    "dataset_registry",
    "load_dataset",
    "load_file",
    "load_hf",
]


class EvalDataError(MoAError, ValueError):
    """The evaluation data cannot be read (missing file, bad line, unknown dataset)."""


@dataclass(frozen=True)
class EvalItem:
    """One question of an evaluation: its id, the query and the fields scorers read."""

    id: str | int
    query: Any
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> Any:
        """The reference answer (`fields["answer"]`), or None."""
        return self.fields.get("answer")


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset registered by a plugin: its loader is called only when it is used."""

    name: str
    loader: Callable[[], Iterable[EvalItem]]
    description: str
    plugin: str


def _item(record: Mapping[str, Any], number: int, where: str) -> EvalItem:
    query = record.get("query", record.get("messages"))
    if query is None or query == "":
        raise EvalDataError(f"{where}: item {number} has no 'query'")
    item_id = record.get("id")
    if item_id is None or item_id == "":
        item_id = number
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise EvalDataError(f"{where}: item {number}: 'id' must be a string or an integer")
    rest = {k: v for k, v in record.items() if k not in ("id", "query", "messages")}
    return EvalItem(item_id, query, rest)


def _checked(items: list[EvalItem], where: str) -> list[EvalItem]:
    seen: set[str] = set()
    for item in items:
        key = json.dumps(item.id)
        if key in seen:
            raise EvalDataError(f"{where}: id {item.id!r} is used twice; ids must be unique")
        seen.add(key)
    if not items:
        raise EvalDataError(f"{where}: no items")
    return items


def load_file(path: Path) -> list[EvalItem]:
    """Items of a JSON Lines, JSON, CSV or Parquet file (by extension)."""
    suffix = path.suffix.lower()
    where = str(path)
    if not path.is_file():
        raise EvalDataError(f"data file not found: {path}")
    records: list[Mapping[str, Any]]
    try:
        if suffix == ".parquet":
            records = _parquet(path)
        else:
            text = path.read_text(encoding="utf-8")
            if suffix == ".csv":
                records = list(csv.DictReader(text.splitlines()))
            elif suffix == ".json":
                data = json.loads(text)
                if not isinstance(data, list):
                    raise EvalDataError(f"{where}: a .json data file must hold a list of items")
                records = data
            else:
                records = []
                for number, line in enumerate(text.splitlines(), 1):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise EvalDataError(f"{where}:{number}: not JSON: {exc.msg}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvalDataError(f"cannot read {where}: {exc}") from None
    items = []
    for number, record in enumerate(records, 1):
        if isinstance(record, str):
            record = {"query": record}
        if not isinstance(record, Mapping):
            raise EvalDataError(f"{where}: item {number} must be an object or a string")
        items.append(_item(record, number, where))
    return _checked(items, where)


def _parquet(path: Path) -> list[Mapping[str, Any]]:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:
        raise EvalDataError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    rows: list[Mapping[str, Any]] = pq.read_table(path).to_pylist()
    return rows


def load_hf(
    spec: str, *, query_field: str = "question", answer_field: str = "answer"
) -> list[EvalItem]:
    """Items of a Hugging Face dataset: `NAME[:CONFIG][@SPLIT]` (default split: test)."""
    try:
        import datasets
    except ModuleNotFoundError:
        raise EvalDataError(
            "hf: datasets need the `datasets` package: pip install datasets"
        ) from None
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    try:
        rows = datasets.load_dataset(name, config or None, split=split or "test")
    except Exception as exc:  # datasets raises many kinds; all mean "cannot load it"
        raise EvalDataError(f"cannot load Hugging Face dataset {spec!r}: {exc}") from None
    items = []
    for number, row in enumerate(rows, 1):
        record = dict(row)
        record.setdefault("query", record.get(query_field))
        record.setdefault("answer", record.get(answer_field))
        items.append(_item(record, number, f"hf:{spec}"))
    return _checked(items, f"hf:{spec}")


def dataset_registry() -> dict[str, DatasetInfo]:
    """Every dataset registered through the `register_datasets` hook, by name."""
    from moa.plugins import get_plugin_manager

    found: dict[str, DatasetInfo] = {}
    for impl in get_plugin_manager().hook.register_datasets.get_hookimpls():

        def register(
            name: str,
            loader: Callable[[], Iterable[EvalItem]],
            description: str = "",
            _plugin: str = impl.plugin_name,
        ) -> None:
            if name in found:
                raise EvalDataError(
                    f"dataset {name!r} is registered twice: by {found[name].plugin!r} "
                    f"and by {_plugin!r}"
                )
            found[name] = DatasetInfo(name, loader, description, _plugin)

        impl.function(register=register)
    return found


def load_dataset(name: str) -> list[EvalItem]:
    """Items of the dataset registered as `name`."""
    registry = dataset_registry()
    info = registry.get(name)
    if info is None:
        known = ", ".join(sorted(registry)) or "none"
        raise EvalDataError(f"unknown dataset {name!r}; registered datasets: {known}")
    return _checked(list(info.loader()), f"dataset {name}")
