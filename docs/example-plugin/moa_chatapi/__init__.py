"""moa-chatapi: neuron type `chatapi`, a chat model behind an HTTP API called with aiohttp.

The example plugin of docs/writing-a-plugin.md: it uses every part of the plugin API once.
It speaks the OpenAI chat format only so that it runs against moa's fake provider; any
HTTP service would do.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import aiohttp
from pydantic import Field

from moa import (
    AuthenticationError,
    ConfigError,
    Generation,
    InvalidResponseError,
    LoopLocal,
    Neuron,
    NeuronConfig,
    NeuronRequest,
    ProviderConnectionError,
    ProviderError,
    RateLimitError,
    Settings,
    Tokenizer,
    TokenLimits,
    Usage,
    hookimpl,
)
from moa.errors import redact
from moa.neurons.base import WordTokenizer


class ChatAPIConfig(NeuronConfig):
    """The YAML keys of `type: chatapi`; NeuronConfig adds name, prompt, weight, timeout,
    max_retries and fallbacks."""

    type: Literal["chatapi"] = "chatapi"
    model: str = Field(min_length=1, description="Model name sent to the API.")
    url: str = Field(pattern=r"^https?://", description="Base URL of the API (.../v1).")
    key_env: str = Field(default="CHATAPI_KEY", description="Variable holding the API key.")
    read_timeout: float | None = Field(default=None, gt=0, description="Seconds between bytes.")
    max_tokens: int | None = Field(default=None, gt=0, description="Longest answer, in tokens.")
    context_window: int | None = Field(default=None, gt=0, description="Tokens the model reads.")


class ChatAPINeuron(Neuron):
    Config = ChatAPIConfig
    config: ChatAPIConfig

    def __init__(self, config: ChatAPIConfig) -> None:  # once, when the mixture is built
        super().__init__(config)
        if config.url.rstrip("/").endswith("/chat/completions"):
            raise ConfigError("url: give the API's base URL, without /chat/completions")
        self.http: LoopLocal[aiohttp.ClientSession] | None = None

    def bind(self, *, settings: Settings, path: str) -> None:  # right after __init__
        super().bind(settings=settings, path=path)  # self.settings and self.path are set
        self.endpoint = self.config.url.rstrip("/") + "/chat/completions"

    def required_secrets(self) -> Sequence[str]:  # `moa validate --check-keys` checks these
        return (self.config.key_env,)

    async def prepare(self) -> None:  # once per mixture, before its first call
        if self.http is None:  # a session per event loop, closed when its loop ends
            self.http = LoopLocal(aiohttp.ClientSession, close=lambda session: session.close())

    async def aclose(self) -> None:  # MixtureOfAgents.aclose(): release what prepare() made
        if self.http is not None:
            await self.http.aclose()

    def tokenizer(self) -> Tokenizer | None:  # for context budgets; None counts words too
        return WordTokenizer()

    def token_limits(self) -> TokenLimits:  # for the context-window check
        return TokenLimits(self.config.context_window, self.config.max_tokens)

    async def generate(self, request: NeuronRequest) -> Generation:  # one attempt
        async with self._post(request, stream=False) as response:
            body = await response.json()
        try:
            text = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise InvalidResponseError(f"unexpected answer: {str(body)[:200]}") from None
        return Generation(text=text, usage=_usage(body.get("usage")), model=self.config.model)

    async def stream(self, request: NeuronRequest) -> AsyncIterator[str | Generation]:
        pieces: list[str] = []
        usage: Usage | None = None
        async with self._post(request, stream=True) as response:
            async for line in response.content:  # server-sent events: `data: {...}`
                data = line.decode().removeprefix("data:").strip()
                if not data or data == "[DONE]":
                    continue
                chunk = json.loads(data)
                usage = _usage(chunk.get("usage")) or usage
                for choice in chunk.get("choices") or []:
                    if text := (choice.get("delta") or {}).get("content"):
                        pieces.append(text)
                        yield text
        yield Generation(text="".join(pieces), usage=usage, model=self.config.model)

    @asynccontextmanager
    async def _post(
        self, request: NeuronRequest, *, stream: bool
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        assert self.http is not None, "prepare() was not awaited"
        session = await self.http.get()  # this event loop's session
        key = self.settings.secret(self.config.key_env)
        payload = {
            "model": self.config.model,
            "messages": [dict(m) for m in request.messages],
            "max_tokens": self.config.max_tokens,
            "stream": stream,
        }
        try:
            async with session.post(
                self.endpoint,
                json=payload,
                headers={"Authorization": f"Bearer {key}"} if key else {},
                timeout=aiohttp.ClientTimeout(sock_read=self.config.read_timeout),
            ) as response:
                await self._check(response)
                yield response
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            # aiohttp errors that are not OSError / TimeoutError (moa maps those itself)
            raise ProviderConnectionError(f"{type(exc).__name__}: {exc}") from None

    async def _check(self, response: aiohttp.ClientResponse) -> None:
        if response.status < 400:
            return
        key = self.settings.secret(self.config.key_env)
        text = redact(await response.text(), [key])[:500]  # upstream text may echo the key
        wait = response.headers.get("retry-after")
        retry_after = float(wait) if wait and wait.isdigit() else None
        if response.status == 429:
            raise RateLimitError(text, status_code=429, retry_after=retry_after)
        if response.status in (401, 403):
            raise AuthenticationError(text, status_code=response.status)
        raise ProviderError(text, status_code=response.status, retry_after=retry_after)


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None  # unknown: never a made-up 0
    return Usage(prompt_tokens=raw["prompt_tokens"], completion_tokens=raw["completion_tokens"])


@hookimpl
def register_neurons(register: Any) -> None:
    register("chatapi", ChatAPINeuron)


__all__ = ["ChatAPIConfig", "ChatAPINeuron", "register_neurons"]
