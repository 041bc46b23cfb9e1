"""moa-llm neuron type `function`: a Python callable answers inside a mixture.

    - type: function
      callable: "my_package.answers:lookup"
      options: {table: capitals}

The callable is `fn(request: NeuronRequest, **options) -> str | Generation`, sync or async.
It is resolved when the neuron is built; a bad path raises `moa.ConfigError` naming it.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Literal, cast

from pydantic import Field, JsonValue

from moa import (
    ConfigError,
    Generation,
    InvalidResponseError,
    Neuron,
    NeuronConfig,
    NeuronRequest,
    hookimpl,
)
from moa.hookspecs import RegisterNeuron

__all__ = ["FunctionConfig", "FunctionNeuron", "NeuronFunction", "resolve_callable"]

NeuronFunction = Callable[..., "str | Generation | Awaitable[str | Generation]"]
"""`fn(request: NeuronRequest, **options)` returning text or a `Generation`, or awaitable."""

_PATH_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


class FunctionConfig(NeuronConfig):
    """Options of a `function` neuron."""

    type: Literal["function"] = "function"
    callable: str = Field(
        pattern=_PATH_PATTERN,
        description='The function to call, as "package.module:name" (sync or async).',
    )
    options: dict[str, JsonValue] = Field(
        default_factory=dict, description="Keyword arguments passed to every call."
    )
    in_thread: bool = Field(
        default=True,
        description="Run a sync function in a worker thread so it cannot block the event loop.",
    )

    @property
    def label(self) -> str:
        return self.name or self.callable


def resolve_callable(path: str) -> NeuronFunction:
    """Import `"package.module:name"` and return the callable; `ConfigError` naming `path`
    when the module does not import, the attribute is missing or it is not callable."""
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise ConfigError(f"callable {path!r} must look like 'package.module:name'")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is a setup mistake
        raise ConfigError(
            f"callable {path!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(
                f"callable {path!r}: {module_name!r} has no attribute {qualname!r}"
            ) from None
    if not callable(target):
        raise ConfigError(
            f"callable {path!r} is a {type(target).__name__}, not a function or callable object"
        )
    return cast(NeuronFunction, target)


class FunctionNeuron(Neuron):
    """Calls a Python function instead of a model."""

    Config = FunctionConfig
    config: FunctionConfig

    def __init__(self, config: NeuronConfig) -> None:
        super().__init__(config)  # checks that config is a FunctionConfig
        # a ConfigError here is reported with the neuron's key path by moa
        self.function = resolve_callable(self.config.callable)
        self._is_async = inspect.iscoroutinefunction(self.function) or (
            inspect.iscoroutinefunction(type(self.function).__call__)
        )

    async def generate(self, request: NeuronRequest) -> Generation:
        options = dict(self.config.options)
        if self._is_async:
            answer: object = await self.function(request, **options)  # type: ignore[misc]
        elif self.config.in_thread:
            answer = await asyncio.to_thread(self.function, request, **options)
        else:
            answer = self.function(request, **options)
        if inspect.isawaitable(answer):  # e.g. a sync function returning a coroutine
            answer = await answer
        return self._to_generation(answer)

    def _to_generation(self, answer: object) -> Generation:
        if isinstance(answer, Generation):
            text: object = answer.text
        else:
            text = answer
        if not isinstance(text, str):
            raise InvalidResponseError(
                f"{self.config.callable} returned {type(text).__name__}, expected str or "
                "moa.Generation",
                neuron=self.path,
                model=self.config.callable,
            )
        if not text.strip():
            raise InvalidResponseError(
                f"{self.config.callable} returned empty text",
                neuron=self.path,
                model=self.config.callable,
            )
        if isinstance(answer, Generation):
            return answer if answer.model else replace(answer, model=self.config.callable)
        return Generation(text=text, model=self.config.callable)

    def __repr__(self) -> str:
        return f"<FunctionNeuron {self.path} {self.config.callable!r}>"


@hookimpl
def register_neurons(register: RegisterNeuron) -> None:
    register("function", FunctionNeuron)
