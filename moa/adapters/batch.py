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
from typing import Any

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
    "read_items",
    "run_batch",
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
            item = _parse_line(line, number)
        key = _key(item.id)
        if key in seen:
            raise BatchInputError(
                f"{path}:{number}: id {item.id!r} is already used on line {seen[key]}; "
                "ids must be unique for a run to be resumable"
            )
        seen[key] = number
        items.append(item)
    return items


def _parse_line(line: str, number: int) -> BatchItem:
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


async def run_batch(
    moa: MixtureOfAgents,
    items: Sequence[BatchItem],
    output: Path,
    *,
    concurrency: int = 8,
    sync: bool = True,
    on_start: Callable[[int], None] | None = None,
    on_item: Callable[[dict[str, Any]], None] | None = None,
    run: Callable[[Any], Awaitable[Any]] | None = None,
) -> BatchSummary:
    """Run every item not yet in `output`, `concurrency` at a time, appending one line each.

    `on_start(n)` is called with the number of items to run, `on_item(record)` after each
    line is written. `run` replaces `moa.process` (tests).
    """
    if concurrency < 1:
        raise BatchInputError("concurrency must be at least 1")
    try:
        done, unreadable = written_ids(output)
    except OSError as exc:
        raise BatchInputError(f"cannot use {output} as output: {exc.strerror or exc}") from None
    todo = [item for item in items if _key(item.id) not in done]
    summary = BatchSummary(
        total=len(items), skipped=len(items) - len(todo), unreadable_output_lines=unreadable
    )
    if on_start is not None:
        on_start(len(todo))
    if not todo:
        return summary
    process = run if run is not None else moa.process
    queue: asyncio.Queue[BatchItem] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    try:
        appender = JsonlAppender(output, sync=sync)
    except OSError as exc:
        raise BatchInputError(f"cannot write {output}: {exc.strerror or exc}") from None

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            if item.problem is not None:
                record = _failure(item, item.problem, "BatchInputError", 0.0)
            else:
                try:
                    result = await process(item.query)
                except MoAError as exc:
                    elapsed = time.perf_counter() - started
                    record = _failure(item, describe_error(exc), type(exc).__name__, elapsed)
                except Exception as exc:  # one query never stops the run; its line says why
                    logger.exception("moa batch: unexpected error on id %r", item.id)
                    elapsed = time.perf_counter() - started
                    kind = type(exc).__name__
                    message = f"unexpected {kind} (details in the log)"
                    record = _failure(item, message, kind, elapsed)
                else:
                    record = _success(item, result, time.perf_counter() - started)
            await appender.append(record)
            summary.done += 1
            if record["error"] is not None:
                summary.errors += 1
                summary.failed_ids.append(item.id)
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
        appender.close()
    return summary
