"""The litellm transport: every provider that is not called directly goes through
`litellm.acompletion`. The one module of the llm neuron that imports litellm (lazily, in
`load_litellm()`, which configures it first).

litellm's exceptions are read by their cause chain (it reports a refused connection and a
body that is not JSON as HTTP 500 alike) into the one failure-kind table.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from moa._runner import to_thread
from moa.errors import NeuronError
from moa.neurons.base import ChatMessage
from moa.neurons.llm._transport import Answer, Chunk, content, tokens
from moa.neurons.llm._upstream_errors import (
    FailureKind,
    neuron_error,
    retry_after_seconds,
    upstream_text,
)

if TYPE_CHECKING:
    from moa.neurons.llm._neuron import LLMConfig, Route

__all__ = [
    "LiteLLMTransport",
    "aload_litellm",
    "classify_exception",
    "load_litellm",
    "reason",
    "retry_after_of",
]

_litellm: ModuleType | None = None
_litellm_lock = threading.Lock()


def load_litellm() -> ModuleType:
    """Import and configure litellm once: offline cost map, no banners, no .env loading."""
    global _litellm
    with _litellm_lock:
        if _litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
            os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
            import litellm

            litellm.suppress_debug_info = True
            litellm.telemetry = False
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
                lite_logger = logging.getLogger(name)
                for handler in list(lite_logger.handlers):
                    lite_logger.removeHandler(handler)
                lite_logger.addHandler(logging.NullHandler())
                lite_logger.setLevel(logging.WARNING)
            _litellm = litellm
        return _litellm


async def aload_litellm() -> ModuleType:
    """`load_litellm()` off the event loop (the first import takes seconds)."""
    if _litellm is not None:
        return _litellm
    return await to_thread(load_litellm)  # a daemon thread: Ctrl-C never waits for it


class LiteLLMTransport:
    """One attempt through `litellm.acompletion`, with litellm's own retries off and an
    explicit timeout (its hidden 600 s default never applies)."""

    def __init__(self, litellm: ModuleType, config: LLMConfig, route: Route) -> None:
        self.litellm = litellm
        self.config = config
        self.route = route

    def _kwargs(
        self, messages: Sequence[ChatMessage], timeout: float | None, **extra: Any
    ) -> dict[str, Any]:
        """litellm arguments for one attempt, without the API key (see `_call`)."""
        kwargs: dict[str, Any] = dict(self.config.params)
        kwargs.update(
            model=self.route.model,
            messages=[dict(m) for m in messages],
            temperature=self.config.temperature,
            timeout=timeout,
            num_retries=0,
            max_retries=0,
            **extra,
        )
        if self.config.max_tokens is not None:
            kwargs["max_tokens"] = self.config.max_tokens
        if self.route.api_base is not None:
            kwargs["api_base"] = self.route.api_base
        return kwargs

    async def _call(self, kwargs: dict[str, Any]) -> Any:
        """Call litellm. The key is read inline, never kept in a local variable: tracebacks
        that capture locals (error trackers) see only the SecretStr."""
        if self.route.api_key is None:
            return await self.litellm.acompletion(**kwargs)
        return await self.litellm.acompletion(
            **kwargs, api_key=self.route.api_key.get_secret_value()
        )

    async def complete(self, messages: Sequence[ChatMessage], *, timeout_s: float | None) -> Answer:
        failure: NeuronError | None = None
        try:
            response = await self._call(self._kwargs(messages, timeout_s))
        except Exception as exc:
            failure = self.failure(exc)
        if failure is not None:
            # Raised outside the except block: the new error has no __context__, so the
            # litellm exception (which holds the request, headers included) is not kept.
            raise failure
        choices = getattr(response, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        return Answer(
            text=content(getattr(message, "content", None)),
            choices=len(choices),
            usage=_usage(getattr(response, "usage", None)),
            model=getattr(response, "model", None),
        )

    async def stream(
        self, messages: Sequence[ChatMessage], *, timeout_s: float | None
    ) -> AsyncIterator[Chunk]:
        kwargs = self._kwargs(
            messages, timeout_s, stream=True, stream_options={"include_usage": True}
        )
        failure: NeuronError | None = None
        try:
            response = await self._call(kwargs)
        except Exception as exc:
            failure = self.failure(exc)
        if failure is not None:
            raise failure  # outside the except block: no __context__ (see `complete`)
        try:
            chunks = aiter(response)
            while True:
                try:
                    raw = await anext(chunks)
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    failure = self.failure(exc)
                if failure is not None:
                    raise failure
                yield _chunk(raw)
        finally:
            aclose = getattr(response, "aclose", None)
            if aclose is not None:
                await aclose()

    def failure(self, exc: BaseException) -> NeuronError:
        """moa's error for a litellm exception, its text through `upstream_text`."""
        secret = self.route.api_key.get_secret_value() if self.route.api_key else None
        kind, status = classify_exception(exc)
        plain = kind in {FailureKind.CONNECTION, FailureKind.NOT_JSON, FailureKind.CUT_STREAM}
        return neuron_error(
            kind,
            upstream_text(reason(exc), [secret]),
            status=None if plain else status,
            retry_after=retry_after_of(exc),
        )


def _chunk(raw: Any) -> Chunk:
    choices = getattr(raw, "choices", None)
    first = choices[0] if choices else None
    text = getattr(getattr(first, "delta", None), "content", None)
    return Chunk(
        text=text if isinstance(text, str) else None,
        usage=_usage(getattr(raw, "usage", None)),
        model=getattr(raw, "model", None),
        finished=bool(getattr(first, "finish_reason", None)),
    )


def _usage(raw: object) -> tuple[int, int] | None:
    return tokens(getattr(raw, "prompt_tokens", None), getattr(raw, "completion_tokens", None))


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain) and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _kinds(chain: list[BaseException]) -> set[tuple[str, str]]:
    """(top-level module, class name) of every class in the MRO of every exception."""
    return {
        (klass.__module__.partition(".")[0], klass.__name__)
        for error in chain
        for klass in type(error).__mro__
    }


_AUTH_NAMES = frozenset({"AuthenticationError", "PermissionDeniedError"})
_TIMEOUTS = {
    ("openai", "APITimeoutError"),
    ("httpx", "TimeoutException"),
    ("builtins", "TimeoutError"),
}
_CONNECTION = {
    ("openai", "APIConnectionError"),
    ("httpx", "NetworkError"),
    ("httpx", "RemoteProtocolError"),
    ("aiohttp", "ClientConnectionError"),
    ("builtins", "ConnectionError"),
}


def classify_exception(exc: BaseException) -> tuple[FailureKind, int | None]:
    """What went wrong in a litellm/openai call, and the upstream HTTP status if there was
    one.

    The causes decide first: litellm's top-level class says "InternalServerError (500)" for
    a refused connection and for a body that is not JSON alike.
    """
    chain = _causes(exc)
    causes = _kinds(chain[1:])
    if causes & _TIMEOUTS:
        return FailureKind.TIMEOUT, None
    if ("json", "JSONDecodeError") in causes:
        return FailureKind.NOT_JSON, None
    if ("builtins", "StopAsyncIteration") in causes:
        return FailureKind.CUT_STREAM, None
    if causes & _CONNECTION:
        return FailureKind.CONNECTION, None
    raw = getattr(exc, "status_code", None)
    status = raw if isinstance(raw, int) else None
    name = type(exc).__name__
    if status == 429 or name == "RateLimitError":
        return FailureKind.RATE_LIMIT, status or 429
    if status in {401, 403} or name in _AUTH_NAMES:
        return FailureKind.AUTH, status
    if status == 408 or (status is None and (_kinds(chain[:1]) & _TIMEOUTS)):
        return FailureKind.TIMEOUT, status
    return FailureKind.ERROR, status


_PREFIX = re.compile(r"^(?:litellm\.)?(?:\w*(?:Error|Exception|Timeout)|Timeout Error)(?::| -)\s+")


def reason(exc: BaseException) -> str:
    """The provider's message without litellm's repeated class-name prefixes."""
    text = str(getattr(exc, "message", None) or exc).strip()
    for _ in range(6):
        stripped = _PREFIX.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    if text in {"", "Connection error."}:  # say what actually failed
        chain = _causes(exc)
        root = chain[-1]
        text = f"{text} {type(root).__name__}: {root}".strip() if len(chain) > 1 else text
    return text


def retry_after_of(exc: BaseException) -> float | None:
    """The Retry-After of the HTTP response an exception carries, if any."""
    return retry_after_seconds(getattr(getattr(exc, "response", None), "headers", None))
