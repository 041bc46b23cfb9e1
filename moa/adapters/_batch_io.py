"""Where a batch reads its queries and writes its rows: JSON Lines or Parquet, on a local
path or any URI pyarrow can open (`s3://bucket/prefix`, `gs://...`).

- Input: a `.jsonl` file (see `moa.adapters.batch`) or Parquet (a `.parquet` file, or a directory
  named `*.parquet` holding them) with a `query` (or `messages`) column and an optional
  `id` column (default: the row number, from 1).
- Output: JSON Lines appended to one file, or Parquet *shards* in a directory (when the
  output path ends with `.parquet`): each shard is written whole under
  a temporary name and then renamed, so a killed run leaves complete shards only. In Parquet,
  `usage` and `result` are JSON text columns; `id` is an integer column when every id of a
  shard is an integer, text otherwise.

Either way, a rerun skips the ids already written (`Sink.done`). pyarrow is imported only
for Parquet or a URI (`pip install 'moa-llm[ray]'` brings it).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from moa.adapters.batch import (
    BatchInputError,
    BatchItem,
    JsonlSink,
    Sink,
    _key,
    parse_line,
    read_items,
)

__all__ = ["JsonlSink", "ParquetSink", "Sink", "is_parquet", "open_sink", "read_any"]


def _is_uri(path: str) -> bool:
    return "://" in path


def is_parquet(path: str) -> bool:
    """Whether `path` names Parquet (a file or directory whose name ends with `.parquet`)."""
    return path.rstrip("/").endswith(".parquet")


def _filesystem(path: str) -> tuple[Any, str]:
    try:
        from pyarrow import fs
    except ImportError:
        raise BatchInputError(
            f"{path}: Parquet and URIs need pyarrow: pip install 'moa-llm[ray]'"
        ) from None
    if _is_uri(path):
        try:
            filesystem, inner = fs.FileSystem.from_uri(path)
            return filesystem, str(inner)
        except Exception as exc:
            raise BatchInputError(f"cannot open {path}: {exc}") from None
    return fs.LocalFileSystem(), str(Path(path).absolute())


def read_any(path: str) -> list[BatchItem]:
    """The queries of `path` (JSON Lines or Parquet, local or a URI)."""
    if is_parquet(path):
        return _read_parquet(path)
    if not _is_uri(path):
        return read_items(Path(path))
    filesystem, inner = _filesystem(path)
    try:
        with filesystem.open_input_stream(inner) as stream:
            text = stream.read().decode("utf-8")
    except Exception as exc:
        raise BatchInputError(f"cannot read {path}: {exc}") from None
    items: list[BatchItem] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            item = parse_line(line, number)
            _check_unique(path, item, number, seen)
            items.append(item)
    return items


def _check_unique(path: str, item: BatchItem, number: int, seen: dict[str, int]) -> None:
    key = _key(item.id)
    if key in seen:
        raise BatchInputError(
            f"{path}:{number}: id {item.id!r} is already used on row {seen[key]}; "
            "ids must be unique for a run to be resumable"
        )
    seen[key] = number


def _read_parquet(path: str) -> list[BatchItem]:
    filesystem, inner = _filesystem(path)
    import pyarrow.dataset as ds

    try:
        table = ds.dataset(inner, filesystem=filesystem, format="parquet").to_table()
    except Exception as exc:
        raise BatchInputError(f"cannot read {path} as Parquet: {exc}") from None
    names = table.column_names
    column = "query" if "query" in names else "messages" if "messages" in names else None
    if column is None:
        raise BatchInputError(f"{path}: no 'query' (or 'messages') column; columns: {names}")
    queries = table.column(column).to_pylist()
    ids = table.column("id").to_pylist() if "id" in names else [None] * len(queries)
    items: list[BatchItem] = []
    seen: dict[str, int] = {}
    for number, (item_id, query) in enumerate(zip(ids, queries, strict=True), start=1):
        item_id = number if item_id is None else item_id
        if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
            item = BatchItem(number, None, f"row {number}: id must be a string or an integer")
        elif query is None:
            item = BatchItem(item_id, None, f"row {number} has no {column}")
        else:
            item = BatchItem(item_id, query)
        _check_unique(path, item, number, seen)
        items.append(item)
    return items


_COLUMNS = ("id", "content", "error", "error_type", "usage", "cost", "seconds", "result")


class ParquetSink:
    """Parquet shards in a directory (local or a URI): `part-<time>-<random>.parquet`, each
    written under a temporary name and renamed when complete. Rows are buffered and a shard
    is written every `shard_rows` rows or `shard_seconds` seconds, and on `flush`/`close`."""

    def __init__(self, path: str, *, shard_rows: int = 1000, shard_seconds: float = 30.0) -> None:
        self.path = path
        self.shard_rows = shard_rows
        self.shard_seconds = shard_seconds
        self._filesystem, self._dir = _filesystem(path)
        self._rows: list[dict[str, Any]] = []
        self._since = time.monotonic()

    def done(self) -> tuple[set[str], int]:
        import pyarrow.parquet as pq
        from pyarrow import fs

        try:
            self._filesystem.create_dir(self._dir, recursive=True)
            infos = self._filesystem.get_file_info(fs.FileSelector(self._dir))
        except Exception as exc:
            raise BatchInputError(f"cannot use {self.path} as output: {exc}") from None
        ids: set[str] = set()
        unreadable = 0
        for info in infos:
            if info.type != fs.FileType.File or not info.base_name.endswith(".parquet"):
                continue  # temporary shards of a killed run are left out
            try:
                with self._filesystem.open_input_file(info.path) as handle:
                    column = pq.read_table(handle, columns=["id"]).column("id").to_pylist()
            except Exception:
                unreadable += 1
                continue
            ids.update(_key(i) for i in column if i is not None)
        return ids, unreadable

    def open(self) -> None:
        pass

    def write(self, record: dict[str, Any]) -> None:
        self._rows.append(record)
        if (
            len(self._rows) >= self.shard_rows
            or time.monotonic() - self._since >= self.shard_seconds
        ):
            self.flush()

    def flush(self) -> None:
        self._since = time.monotonic()
        if not self._rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows, self._rows = self._rows, []
        ids = [r["id"] for r in rows]
        id_type = pa.int64() if all(isinstance(i, int) for i in ids) else pa.string()
        columns = {
            "id": pa.array(ids if id_type == pa.int64() else [str(i) for i in ids], id_type),
            "content": pa.array([r["content"] for r in rows], pa.string()),
            "error": pa.array([r["error"] for r in rows], pa.string()),
            "error_type": pa.array([r["error_type"] for r in rows], pa.string()),
            "usage": pa.array([_json(r["usage"]) for r in rows], pa.string()),
            "cost": pa.array([r["cost"] for r in rows], pa.float64()),
            "seconds": pa.array([r["seconds"] for r in rows], pa.float64()),
            "result": pa.array([_json(r["result"]) for r in rows], pa.string()),
        }
        table = pa.table(columns)
        assert tuple(table.column_names) == _COLUMNS
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        final = f"{self._dir}/{name}"
        temporary = f"{self._dir}/.{name}.tmp"
        with self._filesystem.open_output_stream(temporary) as stream:
            pq.write_table(table, stream)
        self._filesystem.move(temporary, final)

    def checkpoint(self) -> None:
        pass  # `write` writes a shard when one is due

    def close(self) -> None:
        self.flush()


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def open_sink(path: str, *, sync: bool = True) -> Sink:
    """The sink for an output path: Parquet shards or a local JSON Lines file."""
    if is_parquet(path):
        return ParquetSink(path)
    if _is_uri(path):
        raise BatchInputError(
            f"{path}: JSON Lines output must be a local file; write Parquet to a URI "
            "(a path ending with .parquet)"
        )
    if Path(path).is_dir():
        raise BatchInputError(
            f"cannot use {path} as output: it is a directory (name a directory of Parquet "
            "shards *.parquet)"
        )
    return JsonlSink(Path(path), sync=sync)
