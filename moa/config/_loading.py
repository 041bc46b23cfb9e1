"""Loading a config: a YAML file path, YAML text or a mapping, validated as a whole.

`load_config()` validates the whole tree before anything is built, and raises `ConfigError`
naming the file, the key path (`proposal_layers[1].neurons[0].temperature`) and what is
allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from moa.config._errors import explain
from moa.config._models import MoAConfig, key_path
from moa.errors import ConfigError

__all__ = ["Source", "json_schema", "load_config"]


Source = str | Path | Mapping[str, Any]


def load_config(source: Source, *, is_file_path: bool | None = None) -> MoAConfig:
    """Load and validate a config from a file path, YAML text or a mapping.

    `is_file_path=None` treats a `Path` as a file and a `str` as a file when it names an
    existing file and does not look like YAML.
    """
    if isinstance(source, MoAConfig):
        return source
    if isinstance(source, Mapping):
        return _validate(dict(source), "<dict>")
    if is_file_path is None:
        is_file_path = isinstance(source, Path) or (
            "\n" not in source and ":" not in source.replace("\\", "/").split("/")[-1]
        )
    if is_file_path:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}", source=str(path)) from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}", source=str(path)) from None
        return _validate(_parse_yaml(text, str(path)), str(path))
    return _validate(_parse_yaml(str(source), "<string>"), "<string>")


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    import yaml  # lazily: `import moa` stays light

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}", source=source) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the config must be a mapping with proposal_layers and aggregation_layer, "
            f"got {type(data).__name__}",
            source=source,
        )
    return data


def _validate(data: dict[str, Any], source: str) -> MoAConfig:
    try:
        return MoAConfig.model_validate(data)
    except ValidationError as exc:
        errors = [(key_path(e["loc"]), explain(e, data)) for e in exc.errors()]
        lines = "\n".join(f"  {path or '<root>'}: {message}" for path, message in errors)
        count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
        raise ConfigError(
            f"invalid moa config in {source} ({count}):\n{lines}", source=source, errors=errors
        ) from None


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a config file, with every installed neuron type.

    Wherever a neuron goes (annotator, each layer's neurons, the aggregator) the schema is a
    union discriminated by `type` over the installed types' `Config` models; `type` may be
    left out only for the default `llm`. The aggregator's schema puts the neuron keys beside
    `aggregation_prompt`, `shuffle` and `dropout_rate`, as they are written in YAML.
    """
    from moa.config._schema import config_json_schema

    return config_json_schema()
