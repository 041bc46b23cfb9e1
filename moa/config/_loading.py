"""Loading a config: a YAML file path, YAML text or a mapping, validated as a whole.

`load_config()` validates the whole tree before anything is built, and raises `ConfigError`
naming the file, the key path (`proposal_layers[1].neurons[0].temperature`) and what is
allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from moa.config._errors import explain
from moa.config._models import MoAConfig, key_path
from moa.errors import ConfigError

__all__ = ["Source", "json_schema", "load_config"]


Source = str | Path | Mapping[str, Any]
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")


def load_config(source: Source, *, is_file_path: bool | None = None) -> MoAConfig:
    """Load and validate a config from a file path, YAML text or a mapping.

    `is_file_path=None` treats a `Path` as a file and a `str` as a file when it names an
    existing file and does not look like YAML.
    """
    if isinstance(source, MoAConfig):
        return source
    if isinstance(source, Mapping):
        from moa.config._yaml import check_bounds

        check_bounds(source, "<dict>")
        return _validate(dict(source), "<dict>")
    if is_file_path is None:
        is_file_path = isinstance(source, Path) or (
            "\n" not in source and ":" not in source.replace("\\", "/").split("/")[-1]
        )
    if is_file_path:
        return _validate(_parse_yaml(_read(Path(source)), str(source)), str(source))
    return _validate(_parse_yaml(str(source), "<string>"), "<string>")


def _read(path: Path) -> str:
    """The text of a config file, read no further than the size bound (a FIFO or a device
    such as /dev/zero never ends)."""
    from moa.config._yaml import MAX_CONFIG_BYTES, decode

    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}", source=str(path)) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read config file {path}: {reason}", source=str(path)) from None
    return decode(data, str(path))


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    from moa.config._yaml import parse_yaml  # lazily: `import moa` stays light (no yaml)

    data = parse_yaml(text, source)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the config must be a mapping with proposal_layers and aggregation_layer, "
            f"got {type(data).__name__}",
            source=source,
            values=[("", type(data).__name__)],
        )
    return data


def _validate(data: dict[str, Any], source: str) -> MoAConfig:
    try:
        return MoAConfig.model_validate(data)
    except ValidationError as exc:
        found = exc.errors()
        errors = [(key_path(e["loc"]), explain(e, data)) for e in found]
        values = [(_shown_path(e), _type_of(e)) for e in found]
        lines = "\n".join(f"  {path or '<root>'}: {message}" for path, message in errors)
        count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
        raise ConfigError(
            f"invalid moa config in {source} ({count}):\n{lines}",
            source=source,
            errors=errors,
            values=values,
        ) from None


def _shown_path(error: Any) -> str:
    """The key path of an error with every key that is not a plain name (file content, such
    as a line of a password file read as a key) and every unknown key left out."""
    loc = list(error["loc"])
    unknown = error["type"] == "extra_forbidden"
    if unknown:
        loc = loc[:-1]
    safe = [p if isinstance(p, int) or _PLAIN_KEY.fullmatch(p) else "<key>" for p in loc]
    path = key_path(tuple(safe))
    if not unknown:
        return path
    return f"{path}.<unknown key>" if path else "<unknown key>"


def _type_of(error: Any) -> str:
    if error["type"] == "missing":
        return "missing"
    value = error.get("input")
    return "null" if value is None else type(value).__name__


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a config file, with every installed neuron type.

    Wherever a neuron goes (annotator, each layer's neurons, the aggregator) the schema is a
    union discriminated by `type` over the installed types' `Config` models; `type` may be
    left out only for the default `llm`. The aggregator's schema puts the neuron keys beside
    `aggregation_prompt`, `shuffle` and `dropout_rate`, as they are written in YAML.
    """
    from moa.config._schema import config_json_schema

    return config_json_schema()
