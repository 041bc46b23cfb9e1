"""moa as a litellm custom provider: `litellm.completion(model="moa/<name>", ...)` runs a mixture.

    import litellm
    from moa.litellm_provider import register

    register({"research": "moa_config.yaml"})        # name -> config path, mapping or mixture
    response = litellm.completion(model="moa/research", messages=[...])

`<name>` is looked up in what `register()` was given, then in `MOA_LITELLM_CONFIGS`
(`name=path.yaml,other=path2.yaml`). Only with an explicit opt-in (`MOA_LITELLM_ALLOW_PATHS=1`
or `register(allow_paths=True)`) is it then tried as a `.yaml` / `.yml` file path
(`model="moa/configs/research.yaml"`): behind a litellm proxy `moa/<anything>` comes from
clients, and reading any file they name would make the proxy a file reader. For the same
reason a config that fails to load is reported with its key paths and the types of the
values at fault, never the values (`moa validate` shows the full reasons locally). Each
mixture is built once and reused. `completion`,
`acompletion` and both streaming forms work; usage is the sum over every call of the mixture,
and sampling parameters are ignored (the config decides them).

For the litellm proxy (no code at all), point its config at the module-level `handler`:

    litellm_settings:
      custom_provider_map:
        - {"provider": "moa", "custom_handler": moa.litellm_provider.handler}

Importing this module imports litellm (configured as `moa.neurons.llm` configures it).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

from moa.adapters._streaming import events
from moa.adapters._wire import wire_error
from moa.config import MoAConfig, Source
from moa.errors import ConfigError, MissingCredentialsError, MoAError
from moa.events import Completed, MoAEvent, Token
from moa.mixture import MixtureOfAgents
from moa.neurons.llm import load_litellm
from moa.result import MoAResult

__all__ = ["PROVIDER", "MoAProvider", "handler", "register", "resolve", "unregister"]

PROVIDER = "moa"
ENV_CONFIGS = "MOA_LITELLM_CONFIGS"
ENV_ALLOW_PATHS = "MOA_LITELLM_ALLOW_PATHS"
_SUFFIXES = (".yaml", ".yml")

_litellm = load_litellm()
from litellm.llms.custom_llm import CustomLLM, CustomLLMError  # noqa: E402

_lock = threading.Lock()
_sources: dict[str, Source | MoAConfig | MixtureOfAgents] = {}
_built: dict[str, MixtureOfAgents] = {}
_options = {"allow_paths": False}


def register(
    mixtures: Mapping[str, Source | MoAConfig | MixtureOfAgents] | None = None,
    *,
    allow_paths: bool | None = None,
) -> MoAProvider:
    """Make `moa/<name>` models available to litellm (idempotent) and add named mixtures:
    a config path, YAML text, a mapping, a `MoAConfig` or a built `MixtureOfAgents`.

    `allow_paths=True` also lets `moa/<path>.yaml` load that file (as `MOA_LITELLM_ALLOW_PATHS=1`
    does); only for callers you trust with every YAML file this process can read."""
    with _lock:
        if allow_paths is not None:
            _options["allow_paths"] = allow_paths
        for name, source in (mixtures or {}).items():
            _sources[name] = source
            _built.pop(name, None)
        entries = _litellm.custom_provider_map
        if not any(entry.get("provider") == PROVIDER for entry in entries):
            entries.append({"provider": PROVIDER, "custom_handler": handler})
    return handler


def unregister(name: str | None = None) -> None:
    """Forget one named mixture, or (no name) every mixture and the provider itself."""
    with _lock:
        if name is not None:
            _sources.pop(name, None)
            _built.pop(name, None)
            return
        _sources.clear()
        _built.clear()
        _options["allow_paths"] = False
        _litellm.custom_provider_map[:] = [
            e for e in _litellm.custom_provider_map if e.get("provider") != PROVIDER
        ]
        # litellm adds custom providers to these lists on the first call; take it back out
        for registry in (_litellm._custom_providers, _litellm.provider_list):
            if PROVIDER in registry:
                registry.remove(PROVIDER)


def resolve(model: str) -> MixtureOfAgents:
    """The mixture `model` (`<name>` or `moa/<name>`) names; `ConfigError` if none."""
    name = model.removeprefix(f"{PROVIDER}/")
    with _lock:
        if name in _built:
            return _built[name]
        source = _sources.get(name)
        if source is None:
            source = _from_environment(name)
        if source is None and _paths_allowed():
            if not name.lower().endswith(_SUFFIXES):
                raise ConfigError(
                    f"moa/{name}: only registered names, {ENV_CONFIGS} and .yaml / .yml "
                    "config files can be used"
                )
            if Path(name).is_file():
                source = Path(name)
        if source is None:
            known = sorted({*_sources, *_environment()})
            paths = " or use a .yaml config file path" if _paths_allowed() else ""
            raise ConfigError(
                f"no moa mixture named {name!r}: register it with "
                f"moa.litellm_provider.register({{{name!r}: 'config.yaml'}}) or list it in "
                f"{ENV_CONFIGS}{paths} (known: {', '.join(known) or 'none'})"
            )
        moa = source if isinstance(source, MixtureOfAgents) else _build(source)
        _built[name] = moa
        return moa


def _paths_allowed() -> bool:
    return _options["allow_paths"] or os.environ.get(ENV_ALLOW_PATHS, "") in {"1", "true", "yes"}


def _build(source: Source | MoAConfig) -> MixtureOfAgents:
    """The mixture of `source`; a config error names key paths and value types only."""
    try:
        return MixtureOfAgents.from_config(source)
    except MissingCredentialsError:
        raise  # names the variable to set, nothing from the file
    except ConfigError as exc:
        where = exc.source or "the config"
        if exc.values:
            at = "; ".join(f"{path or '<root>'} ({kind})" for path, kind in exc.values)
            message = f"invalid moa config in {where}, at: {at}"
        else:
            message = f"{where} cannot be loaded as a moa config"
        raise ConfigError(
            f"{message} (run `moa validate {where}` for the details)", source=exc.source
        ) from None


def _environment() -> dict[str, str]:
    pairs = (p.partition("=") for p in os.environ.get(ENV_CONFIGS, "").split(",") if p.strip())
    return {name.strip(): path.strip() for name, _, path in pairs if name.strip() and path}


def _from_environment(name: str) -> Path | None:
    path = _environment().get(name)
    return Path(path) if path else None


def _failure(exc: BaseException) -> Exception:
    """A `CustomLLMError` whose status litellm maps to its own exception classes."""
    if isinstance(exc, ConfigError):
        status, message = 404, str(exc)
    else:
        error = wire_error(exc)
        status, message = error.status, error.message
    return CustomLLMError(status_code=status, message=message)  # type: ignore[no-untyped-call]


def _usage(result: MoAResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "total_tokens": result.usage.total_tokens,
    }


def _fill(model_response: Any, model: str, result: MoAResult) -> Any:
    model_response.choices[0].message.content = result.content
    model_response.choices[0].finish_reason = "stop"
    model_response.model = f"{PROVIDER}/{model.removeprefix(f'{PROVIDER}/')}"
    model_response.created = int(time.time())
    model_response.usage = _litellm.Usage(**_usage(result))
    return model_response


def _chunk(event: MoAEvent) -> dict[str, Any] | None:
    if isinstance(event, Token) and event.text:
        return {"text": event.text, "is_finished": False, "finish_reason": "", "usage": None,
                "index": 0, "tool_use": None}  # fmt: skip
    if isinstance(event, Completed):
        return {"text": "", "is_finished": True, "finish_reason": "stop",
                "usage": _usage(event.result), "index": 0, "tool_use": None}  # fmt: skip
    return None


def _threaded(moa: MixtureOfAgents, messages: list[Any]) -> Iterator[MoAEvent]:
    """`events()` for synchronous callers: the run has its own loop in a worker thread, so
    this works whether or not the caller's thread runs an event loop."""
    inbox: queue.Queue[tuple[str, Any]] = queue.Queue()

    async def pump() -> None:
        try:
            async for event in events(moa, messages):
                inbox.put(("event", event))
        except BaseException as exc:  # handed to the caller's thread
            inbox.put(("error", exc))
        else:
            inbox.put(("done", None))

    threading.Thread(target=asyncio.run, args=(pump(),), daemon=True).start()
    while True:
        kind, value = inbox.get()
        if kind == "error":
            raise value
        if kind == "done":
            return
        yield value


class MoAProvider(CustomLLM):
    """The handler litellm calls for `moa/<name>` models.

    litellm passes every argument by keyword; the ones a mixture has no use for (api_base,
    optional_params, logging_obj...) are taken as `**_`, hence the `override` ignores.
    """

    def completion(  # type: ignore[override]
        self, model: str, messages: list[Any], model_response: Any, **_: Any
    ) -> Any:
        moa = self._mixture(model)
        try:
            result = next(e.result for e in _threaded(moa, messages) if isinstance(e, Completed))
        except MoAError as exc:
            raise _failure(exc) from exc
        return _fill(model_response, model, result)

    async def acompletion(  # type: ignore[override]
        self, model: str, messages: list[Any], model_response: Any, **_: Any
    ) -> Any:
        moa = self._mixture(model)
        try:
            result = await moa.process(messages)
        except MoAError as exc:
            raise _failure(exc) from exc
        return _fill(model_response, model, result)

    def streaming(  # type: ignore[override]
        self, model: str, messages: list[Any], **_: Any
    ) -> Iterator[dict[str, Any]]:
        moa = self._mixture(model)
        try:
            for event in _threaded(moa, messages):
                chunk = _chunk(event)
                if chunk is not None:
                    yield chunk
        except MoAError as exc:
            raise _failure(exc) from exc

    async def astreaming(  # type: ignore[override]
        self, model: str, messages: list[Any], **_: Any
    ) -> AsyncIterator[dict[str, Any]]:
        moa = self._mixture(model)
        try:
            async for event in events(moa, messages):
                chunk = _chunk(event)
                if chunk is not None:
                    yield chunk
        except MoAError as exc:
            raise _failure(exc) from exc

    @staticmethod
    def _mixture(model: str) -> MixtureOfAgents:
        try:
            return resolve(model)
        except MoAError as exc:
            raise _failure(exc) from exc


handler = MoAProvider()
