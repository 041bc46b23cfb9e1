"""Resumable batch runs: one query per input line, one result line per query.

Input (JSON Lines): each non-blank line is a JSON string (the query; its id is the line
number) or an object `{"id": ..., "query": ...}` (`id` optional, a string or an integer;
`query` a string, a list of user turns or a chat history; `messages` is accepted for
`query`).

Output (JSON Lines, appended): `{"id", "content", "error", "error_type", "usage", "cost",
"seconds", "result"}` per query, in the order queries finish. A query that fails is written
with its `error` instead of stopping the run. Each line is written with a single `write()` of
the whole line on a file opened for appending, then flushed to disk, so a killed run leaves
whole lines only; rerunning skips every id already in the output. A half line left by another
tool at the end of the file is cut off before appending, and unreadable lines are ignored.

Whatever one query does (a lone surrogate in its text, an unexpected error), its line is
written as failed and the run goes on; every line written is valid UTF-8 (a lone surrogate
in an answer becomes U+FFFD). The first line that cannot be written (a full disk,
`-o /dev/full`) stops the run with `BatchOutputError`: what was written stays, and a rerun
resumes. Only a regular file is read back for resuming.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from moa._unicode import json_bytes, lone_surrogate
from moa.adapters._wire import describe_error
from moa.errors import MoAError
from moa.mixture import MixtureOfAgents

__all__ = [
    "BatchInputError",
    "BatchItem",
    "BatchOutputError",
    "BatchSummary",
    "JsonlAppender",
    "JsonlSink",
    "Sink",
    "parse_line",
    "plan_batch",
    "read_items",
    "run_batch",
    "run_item",
    "written_ids",
]

ItemId = str | int
logger = logging.getLogger("moa.adapters.batch")


class BatchInputError(MoAError, ValueError):
    """The input file cannot be run as a batch (unreadable, or an id used twice)."""


class BatchOutputError(MoAError):
    """A result line could not be written; the run stopped there (rerun to resume)."""


@dataclass(frozen=True)
class BatchItem:
    """One query of the input. `problem` is set when the line could not be read as a query."""

    id: ItemId
    query: Any
    problem: str | None = None


@dataclass
class BatchSummary:
    """What a run did: queries run, how many of them failed, ids skipped as already done."""

    total: int = 0
    done: int = 0
    errors: int = 0
    skipped: int = 0
    unreadable_output_lines: int = 0
    failed_ids: list[ItemId] = field(default_factory=list)
    cost: float = 0.0
    rows_per_worker: list[int] = field(default_factory=list)
    """Rows each Ray actor returned (`--backend ray` only)."""
    stopped_by_cost: bool = False
    """True when `max_cost` was reached and the remaining queries were not started."""

    def record(self, record: dict[str, Any]) -> None:
        """Count one written row."""
        self.done += 1
        self.cost += record.get("cost") or 0.0
        if record.get("error") is not None:
            self.errors += 1
            self.failed_ids.append(record["id"])


def _key(item_id: ItemId) -> str:
    # 1 and "1" are different ids, as they are in JSON.
    return json.dumps(item_id)


def read_items(path: Path) -> list[BatchItem]:
    """Read the input file. Raises `BatchInputError` if it cannot be read or an id repeats."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BatchInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    items: list[BatchItem] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:  # that line fails; the others run
            item = BatchItem(number, None, f"line {number} is not UTF-8 text")
        else:
            if not line.strip():
                continue
            item = parse_line(line, number)
        key = _key(item.id)
        if key in seen:
            raise BatchInputError(
                f"{path}:{number}: id {item.id!r} is already used on line {seen[key]}; "
                "ids must be unique for a run to be resumable"
            )
        seen[key] = number
        items.append(item)
    return items


def parse_line(line: str, number: int) -> BatchItem:
    """One input line as an item (with `problem` set when it is not a usable query)."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        return BatchItem(number, None, f"line {number} is not JSON: {exc.msg}")
    if isinstance(data, str):
        return BatchItem(number, data)
    if not isinstance(data, dict):
        return BatchItem(
            number, None, f"line {number} must be a string or an object, got {type(data).__name__}"
        )
    item_id = data.get("id", number)
    if item_id is None:
        item_id = number
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        return BatchItem(number, None, f"line {number}: id must be a string or an integer")
    if isinstance(item_id, str) and lone_surrogate(item_id) is not None:
        return BatchItem(number, None, f"line {number}: the id holds a lone surrogate")
    query = data.get("query", data.get("messages"))
    if query is None:
        return BatchItem(item_id, None, f"line {number} has no 'query'")
    return BatchItem(item_id, query)


def written_ids(path: Path) -> tuple[set[str], int]:
    """Ids already in the output file (as `json.dumps` keys) and the number of unreadable
    lines. A half-written last line (no newline, not JSON) is cut off so appends start on a
    fresh line; a complete last line without its newline gets one."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return set(), 0
    if not stat.S_ISREG(mode):  # a pipe or a device (/dev/full reads zeros forever)
        return set(), 0
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        start = data.rfind(b"\n") + 1
        with path.open("r+b") as handle:
            if _record_id(data[start:]) is not None:
                handle.seek(0, os.SEEK_END)
                handle.write(b"\n")
                data += b"\n"
            else:
                handle.truncate(start)
                data = data[:start]
            handle.flush()
            os.fsync(handle.fileno())
    ids: set[str] = set()
    unreadable = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        item_id = _record_id(line)
        if item_id is None:
            unreadable += 1
        else:
            ids.add(_key(item_id))
    return ids, unreadable


def _record_id(line: bytes) -> ItemId | None:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    item_id = record.get("id")
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        return None
    return item_id


class JsonlAppender:
    """Appends whole lines to a file: one `write()` per line on an `O_APPEND` descriptor, then
    `fsync`, so a crash or `kill -9` never leaves part of a line behind."""

    def __init__(self, path: Path, *, sync: bool = True) -> None:
        self.path = path
        self.sync = sync
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write_line(self, record: dict[str, Any]) -> None:
        data = json_bytes(record) + b"\n"
        view = memoryview(data)
        while view:  # a regular file takes it in one write; loop only on a short write
            written = os.write(self._fd, view)
            view = view[written:]

    async def append(self, record: dict[str, Any]) -> None:
        """Write and (with `sync`) fsync one line; `BatchOutputError` if the file refuses."""
        try:
            self.write_line(record)
            if self.sync and stat.S_ISREG(os.fstat(self._fd).st_mode):
                await asyncio.to_thread(os.fsync, self._fd)
        except OSError as exc:
            raise BatchOutputError(
                f"cannot write {self.path}: {exc.strerror or exc}; the run stopped there "
                "(lines written so far are kept; rerun the same command to resume)"
            ) from None

    def close(self) -> None:
        os.close(self._fd)


class Sink(Protocol):
    """Where rows go. `done()` is called once, before the first `write`."""

    def done(self) -> tuple[set[str], int]:
        """Keys (`json.dumps(id)`) already written, and unreadable lines/shards ignored."""
        ...

    def open(self) -> None:
        """Get ready to write (fails early if the output cannot be written)."""
        ...

    def write(self, record: dict[str, Any]) -> None: ...

    def flush(self) -> None:
        """Make everything written so far durable."""
        ...

    def checkpoint(self) -> None:
        """Make what was written durable if it is cheap or due (after a chunk of rows)."""
        ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends to a local JSON Lines file (see `JsonlAppender`)."""

    def __init__(self, path: Path, *, sync: bool = True) -> None:
        self.path = path
        self.sync = sync
        self._appender: JsonlAppender | None = None

    def done(self) -> tuple[set[str], int]:
        try:
            return written_ids(self.path)
        except OSError as exc:
            raise BatchInputError(
                f"cannot use {self.path} as output: {exc.strerror or exc}"
            ) from None

    def open(self) -> None:
        if self._appender is None:
            try:
                self._appender = JsonlAppender(self.path, sync=self.sync)
            except OSError as exc:
                raise BatchInputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def write(self, record: dict[str, Any]) -> None:
        self.open()
        assert self._appender is not None
        try:
            self._appender.write_line(record)
        except OSError as exc:
            raise self._stopped(exc) from None

    def flush(self) -> None:
        appender = self._appender
        if appender is None or not self.sync:
            return
        try:
            if stat.S_ISREG(os.fstat(appender._fd).st_mode):
                os.fsync(appender._fd)
        except OSError as exc:
            raise self._stopped(exc) from None

    def _stopped(self, exc: OSError) -> BatchOutputError:
        return BatchOutputError(
            f"cannot write {self.path}: {exc.strerror or exc}; the run stopped there "
            "(lines written so far are kept; rerun the same command to resume)"
        )

    def checkpoint(self) -> None:
        self.flush()

    def close(self) -> None:
        if self._appender is not None:
            try:
                self.flush()
            finally:
                self._appender.close()
                self._appender = None


def _success(item: BatchItem, moa_result: Any, seconds: float) -> dict[str, Any]:
    return {
        "id": item.id,
        "content": moa_result.content,
        "error": None,
        "error_type": None,
        "usage": moa_result.usage.model_dump(),
        "cost": moa_result.cost,
        "seconds": round(seconds, 6),
        "result": moa_result.model_dump(mode="json"),
    }


def _failure(item: BatchItem, message: str, error_type: str, seconds: float) -> dict[str, Any]:
    return {
        "id": item.id,
        "content": None,
        "error": message,
        "error_type": error_type,
        "usage": None,
        "cost": None,
        "seconds": round(seconds, 6),
        "result": None,
    }


def plan_batch(
    items: Sequence[BatchItem], sink: Sink, on_start: Callable[[int], None] | None = None
) -> tuple[list[BatchItem], BatchSummary, set[str]]:
    """The items not yet in `sink` (a resumed run skips what is written), the summary that
    counts them, and the keys (`json.dumps(id)`) already written. Calls `on_start(n)` with
    the number of items to run."""
    written, unreadable = sink.done()
    todo = [item for item in items if _key(item.id) not in written]
    summary = BatchSummary(
        total=len(items), skipped=len(items) - len(todo), unreadable_output_lines=unreadable
    )
    if on_start is not None:
        on_start(len(todo))
    return todo, summary, written


async def run_batch(
    moa: MixtureOfAgents,
    items: Sequence[BatchItem],
    output: Path | Sink,
    *,
    concurrency: int = 8,
    sync: bool = True,
    max_cost: float | None = None,
    on_start: Callable[[int], None] | None = None,
    on_item: Callable[[dict[str, Any]], None] | None = None,
    run: Callable[[Any], Awaitable[Any]] | None = None,
) -> BatchSummary:
    """Run every item not yet in `output`, `concurrency` at a time, writing one row each.

    `output` is a JSON Lines path or a `Sink` (`moa.adapters._batch_io` has Parquet shards).
    No new query starts once the rows written cost `max_cost` USD or more. `on_start(n)` is
    called with the number of items to run, `on_item(record)` after each row is written.
    `run` replaces `moa.process` (tests).
    """
    if concurrency < 1:
        raise BatchInputError("concurrency must be at least 1")
    sink: Sink = JsonlSink(output, sync=sync) if isinstance(output, Path) else output
    todo, summary, _ = plan_batch(items, sink, on_start)
    if not todo:
        return summary
    process = run if run is not None else moa.process
    sink.open()
    queue: asyncio.Queue[BatchItem] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    durable_each = isinstance(sink, JsonlSink) and sync

    async def worker() -> None:
        while True:
            if max_cost is not None and summary.cost >= max_cost:
                summary.stopped_by_cost = True
                return
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            record = await run_item(process, item)
            sink.write(record)
            if durable_each:
                await asyncio.to_thread(sink.flush)
            summary.record(record)
            if on_item is not None:
                on_item(record)

    try:
        workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(todo)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    finally:
        sink.close()
    return summary


async def run_item(process: Callable[[Any], Awaitable[Any]], item: BatchItem) -> dict[str, Any]:
    """The output row of one item: its result, or its error as data."""
    started = time.perf_counter()
    if item.problem is not None:
        return _failure(item, item.problem, "BatchInputError", 0.0)
    try:
        result = await process(item.query)
    except MoAError as exc:
        elapsed = time.perf_counter() - started
        return _failure(item, describe_error(exc), type(exc).__name__, elapsed)
    except Exception as exc:  # one query never stops the run; its line says why
        logger.exception("moa batch: unexpected error on id %r", item.id)
        elapsed = time.perf_counter() - started
        kind = type(exc).__name__
        return _failure(item, f"unexpected {kind} (details in the log)", kind, elapsed)
    return _success(item, result, time.perf_counter() - started)
