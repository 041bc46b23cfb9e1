"""Reading a config from text nobody vouched for, within fixed bounds.

`yaml.safe_load` already refuses arbitrary Python objects, but on its own it accepts a few
hundred bytes that expand to billions of values (an "alias bomb": each anchor repeats the one
before it), nesting deep enough to exhaust the interpreter's stack, 5,000-digit integers that
`int()` refuses with a bare `ValueError`, and a repeated key that silently replaces the first.
Here each of those is a `ConfigError` naming the source and, where it helps, the line or the
key path; the bounds are:

- `MAX_CONFIG_BYTES` of text (UTF-8 only: a UTF-16 or binary file is refused);
- `MAX_DEPTH` levels of nested mappings and lists;
- `MAX_VALUES` values once every alias is expanded (what pydantic and every later copy see);
- `MAX_INT_DIGITS` digits in an integer.

`check_bounds()` applies the depth and value bounds to a mapping given in code as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from moa.errors import ConfigError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_VALUES",
    "check_bounds",
    "decode",
    "parse_yaml",
]

MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_VALUES = 100_000
MAX_INT_DIGITS = 100

_MERGE = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):
    """A bound was crossed while reading; `where` is a key path or a line."""

    def __init__(self, message: str, where: str = "") -> None:
        self.message = message
        self.where = where
        super().__init__(message)


def _key_path(path: list[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class _BoundedLoader(yaml.SafeLoader):
    """`SafeLoader` that tracks where it is, refuses deep nesting, repeated keys and huge
    integers. Aliases are resolved as usual (to shared objects); `check_bounds` counts them
    expanded."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[str | int] = []

    def compose_node(self, parent: Any, index: Any) -> Any:
        if parent is None:  # the root
            return super().compose_node(parent, index)
        if isinstance(index, yaml.ScalarNode):  # a mapping's value: its key is the step
            self._path.append(str(index.value))
        else:  # a list's position, or "?" while composing a mapping's key
            self._path.append(index if isinstance(index, int) else "?")
        try:
            if len(self._path) > MAX_DEPTH:
                raise _Refused(
                    f"nested too deep (more than {MAX_DEPTH} levels)",
                    _key_path(self._path[:8]) + "...",
                )
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: set[str] = set()
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
                continue
            if key.value in seen:
                line = key.start_mark.line + 1
                raise _Refused(
                    f"duplicate key (line {line}): each key may appear once in a mapping",
                    _key_path([*self._path, str(key.value)]),
                )
            seen.add(key.value)
        return node


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    digits = sum(c.isalnum() for c in str(node.value))
    if digits > MAX_INT_DIGITS:
        raise _Refused(
            f"an integer of {digits} digits (line {node.start_mark.line + 1}); the most "
            f"allowed is {MAX_INT_DIGITS} digits"
        )
    value: int = yaml.SafeLoader.construct_yaml_int(loader, node)
    return value


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def decode(data: bytes, source: str) -> str:
    """The text of a config file: at most `MAX_CONFIG_BYTES`, UTF-8 (a BOM is allowed)."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{source}: the file is larger than {MAX_CONFIG_BYTES} bytes; a config is a few "
            "kilobytes of YAML",
            source=source,
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{source}: not UTF-8 text (invalid byte at offset {exc.start}); save the config "
            "as UTF-8 YAML",
            source=source,
        ) from None


def parse_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load(text)` within the bounds above; `ConfigError` naming `source` else."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{source}: the config is larger than {MAX_CONFIG_BYTES} characters", source=source
        )
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)
        data = loader.get_single_data()
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            f"{source}: invalid YAML: unacceptable character #x{exc.character:04x} at "
            f"position {exc.position} ({exc.reason})",
            source=source,
        ) from None
    except _Refused as exc:
        where = f" at {exc.where}" if exc.where else ""
        raise ConfigError(f"{source}{where}: {exc.message}", source=source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        # only the problem: str(exc) would quote the offending line of the file
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}", source=source) from None
    finally:
        if loader is not None:
            loader.dispose()
    check_bounds(data, source)
    return data


def check_bounds(data: Any, source: str) -> None:
    """Refuse `data` nested deeper than `MAX_DEPTH`, holding more than `MAX_VALUES` values
    once shared parts (YAML aliases) are counted every time they appear, or containing
    itself. Linear in the number of distinct containers."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(value: Any, path: list[str | int]) -> int:
        if isinstance(value, Mapping):
            items: list[tuple[str | int, Any]] = [(str(k), v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        else:
            return 1
        known = sizes.get(id(value))
        if known is not None:
            return known
        where = _key_path(path)
        if id(value) in open_:
            raise ConfigError(
                f"{source} at {where}: the value contains itself (a recursive YAML alias)",
                source=source,
            )
        if len(path) >= MAX_DEPTH:
            raise ConfigError(
                f"{source} at {_key_path(path[:8])}...: nested too deep (more than "
                f"{MAX_DEPTH} levels)",
                source=source,
            )
        open_.add(id(value))
        total = 1
        for key, child in items:
            total += size(child, [*path, key])
            if total > MAX_VALUES:
                raise ConfigError(
                    f"{source} at {where or '<root>'}: more than {MAX_VALUES} values once "
                    "YAML aliases are expanded (an alias repeats everything its anchor holds)",
                    source=source,
                )
        open_.discard(id(value))
        sizes[id(value)] = total
        return total

    size(data, [])
