"""Turning pydantic's validation errors into what a config author needs: the key path as
written in YAML, the allowed keys of the mapping at fault, and a "did you mean" hint."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel

from moa.config._dispatch import neuron_config_of
from moa.config._models import AggregationLayerConfig, MoAConfig, NeuronConfig, key_path

__all__ = ["explain", "key_path"]


def explain(error: Any, data: Mapping[str, Any]) -> str:
    kind = error["type"]
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        allowed = _allowed_keys(tuple(error["loc"][:-1]), data)
        hint = ""
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            hint = f"; did you mean {close[0]!r}?"
        elif len(error["loc"]) == 1 and key in {"model", "temperature", "prompt"}:
            hint = "; is it meant to be indented under 'annotator:'?"
        return f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))}){hint}"
    if kind == "missing":
        return "required key is missing"
    if (
        "input" in error
        and kind not in {"model_type", "dict_type"}
        and not isinstance(error["input"], (dict, list))
    ):
        return f"{message} (got {error['input']!r})"
    return message


def _allowed_keys(loc: tuple[int | str, ...], data: Any) -> list[str]:
    """The keys the model at `loc` accepts, found by walking the raw data alongside the models."""
    model: Any = MoAConfig
    for part in loc:
        if model is NeuronConfig and not isinstance(part, int):
            # resolved only once `data` is the neuron's own mapping (not its layer's list)
            model = neuron_config_of(data)
        if isinstance(data, (list, dict)) and part != "neuron":
            try:
                data = data[part]  # type: ignore[index]
            except (KeyError, IndexError, TypeError):
                data = None
        if isinstance(part, int):
            continue
        if model is AggregationLayerConfig and part == "neuron":
            break  # the aggregator's neuron keys live in the aggregation_layer mapping itself
        field = model.model_fields.get(part) if _is_model(model) else None
        if field is None:
            return []
        model = _model_of(field.annotation)
    if model is NeuronConfig:
        model = neuron_config_of(data)
    if model is AggregationLayerConfig:
        neuron_cls = neuron_config_of(data)
        return sorted((set(model.model_fields) - {"neuron"}) | set(neuron_cls.model_fields))
    return sorted(model.model_fields) if _is_model(model) else []


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _model_of(annotation: Any) -> Any:
    """The model class inside `list[X]`, `X | None` or `Annotated[X, ...]`."""
    while get_origin(annotation) is not None and get_origin(annotation) is not Literal:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[-1] if args else None
    return annotation
