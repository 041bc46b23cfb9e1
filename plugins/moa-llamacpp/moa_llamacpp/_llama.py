"""One GGUF model and one llama.cpp context holding several sequences, through
llama-cpp-python's low-level API (`llama_cpp._internals`) rather than its `Llama` class.

Why not `Llama`: its context holds a single sequence, and with `verbose=False` it silences
llama.cpp by swapping the process's stdout/stderr file descriptors, which is not thread-safe
(two models loading at once could leave fds 1 and 2 on /dev/null for good). Here llama.cpp is
kept quiet through its log callback (the `llama-cpp-python` logger) and loads run one at a
time under a process-wide lock. The chat is still formatted by llama-cpp-python's own chat
handler for the model, so prompt tokens, stop strings and grammars are exactly the ones
`Llama.create_chat_completion` would use.

Everything here runs on the model's scheduler thread; `llama_cpp` is imported there, lazily.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["LoadedModel", "Plan", "load_lock"]

load_lock = threading.Lock()
"""Process-wide: llama.cpp's backend initialisation and model loads run one at a time."""

_backend_ready = False

CHAT_DEFAULTS: Mapping[str, Any] = {
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.05,
    "typical_p": 1.0,
    "stop": [],
    "response_format": None,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repeat_penalty": 1.0,
    "tfs_z": 1.0,
    "mirostat_mode": 0,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.1,
    "logit_bias": None,
}
"""`Llama.create_chat_completion`'s defaults, so the two paths sample alike."""

_LAST_N_TOKENS = 64
"""`Llama(last_n_tokens_size=64)`: how far back the repetition penalties look."""


@dataclass
class Plan:
    """One completion as llama-cpp-python's chat handler asked for it."""

    prompt: list[int]
    max_tokens: int | None
    stop: tuple[bytes, ...]
    options: dict[str, Any]


_EMPTY_COMPLETION: dict[str, Any] = {
    "id": "cmpl-plan",
    "object": "text_completion",
    "created": 0,
    "model": "plan",
    "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
}


class _Capture:
    """Stands in for `Llama` while a chat handler runs: it tokenizes as `Llama` does and
    records the completion the handler asks for instead of running it."""

    verbose = False

    def __init__(self, model: Any) -> None:
        self._model = model
        self.request: dict[str, Any] | None = None

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        tokens: list[int] = self._model.tokenize(text, add_bos, special)
        return tokens

    def create_completion(self, **request: Any) -> dict[str, Any]:
        self.request = request
        return _EMPTY_COMPLETION


class LoadedModel:
    """A GGUF model, its chat handler, and a context whose `n_ctx` cells are split into
    `n_parallel` sequences, each with its own KV stream (llama.cpp rounds each share up to a
    multiple of 256 cells).

    Separate streams (not llama.cpp's unified KV cache) keep every sequence's cells laid out
    as they would be if it ran alone, so its arithmetic, and with it its answer, does not
    depend on which other sequences share the batch; attention also reads only its own
    cells."""

    def __init__(self, path: str, *, n_ctx: int, n_threads: int, n_parallel: int) -> None:
        from llama_cpp import _internals as internals
        from llama_cpp import llama_cpp as lib

        _internals: Any = internals  # its classes are not annotated

        global _backend_ready
        with load_lock:
            logger = logging.getLogger("llama-cpp-python")
            if logger.level == logging.NOTSET:  # what Llama(verbose=False) sets
                logger.setLevel(logging.ERROR)
            if not _backend_ready:
                lib.llama_backend_init()
                _backend_ready = True
            model_params = lib.llama_model_default_params()
            model_params.n_gpu_layers = 0
            # verbose=True only disables llama-cpp-python's fd swapping; the log callback
            # still drops llama.cpp's messages below ERROR.
            self.model: Any = _internals.LlamaModel(
                path_model=path, params=model_params, verbose=True
            )
            try:
                self.n_batch = min(n_ctx, 512)
                params = lib.llama_context_default_params()
                params.n_ctx = (n_ctx // n_parallel) * n_parallel
                params.n_batch = params.n_ubatch = self.n_batch
                params.n_threads = params.n_threads_batch = n_threads
                params.n_seq_max = n_parallel
                params.kv_unified = False
                params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as Llama's default
                self.ctx: Any = _internals.LlamaContext(model=self.model, params=params)
                self.batch: Any = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1)
                self._handler = _chat_handler(self.model)
            except BaseException:
                self.model.close()
                raise
        self._lib = lib
        self._internals: Any = _internals
        self.n_vocab: int = self.model.n_vocab()
        self.memory: Any = self.ctx.memory

    def plan(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        temperature: float,
        max_tokens: int,
        seed: int | None,
        params: Mapping[str, Any],
    ) -> Plan:
        """Render and tokenize the chat with the model's chat handler."""
        capture = _Capture(self.model)
        options = {**CHAT_DEFAULTS, **params}
        self._handler(
            llama=capture,
            messages=[dict(m) for m in messages],
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            stream=False,
            model=None,
            logits_processor=None,
            grammar=None,
            logprobs=None,
            top_logprobs=None,
            **options,
        )
        request = capture.request
        if request is None:
            raise RuntimeError("the model's chat handler did not ask for a completion")
        prompt = request.pop("prompt")
        if isinstance(prompt, str):
            prompt = self.model.tokenize(prompt.encode("utf-8"), False, True)
        stop = request.pop("stop", None) or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        return Plan(
            prompt=list(prompt),
            max_tokens=request.pop("max_tokens", max_tokens),
            stop=tuple(s.encode("utf-8") for s in stop if s),
            options=request,
        )

    def sampler(self, plan: Plan) -> Any:
        """A sampler chain built like `Llama._init_sampler`, with the plan's own seed."""
        lib, opts = self._lib, plan.options
        chain: Any = self._internals.LlamaSampler()
        seed = opts.get("seed")
        seed = lib.LLAMA_DEFAULT_SEED if seed is None else int(seed) & 0xFFFFFFFF
        if opts.get("logit_bias"):
            bias = {int(k): float(v) for k, v in opts["logit_bias"].items()}
            chain.add_logit_bias(self.n_vocab, bias)
        chain.add_penalties(
            n_vocab=self.n_vocab,
            penalty_last_n=_LAST_N_TOKENS,
            penalty_repeat=opts.get("repeat_penalty", 1.0),
            penalty_freq=opts.get("frequency_penalty", 0.0),
            penalty_present=opts.get("presence_penalty", 0.0),
        )
        if opts.get("grammar") is not None:
            chain.add_grammar(self.model, opts["grammar"])
        temp = float(opts.get("temperature", 0.8))
        mirostat = opts.get("mirostat_mode", 0)
        if temp < 0.0:
            chain.add_dist(seed)
        elif temp == 0.0:
            chain.add_greedy()
        elif mirostat == 1:
            chain.add_mirostat(self.n_vocab, seed, opts["mirostat_tau"], opts["mirostat_eta"], 100)
        elif mirostat == 2:
            chain.add_mirostat_v2(seed, opts["mirostat_tau"], opts["mirostat_eta"])
        else:
            chain.add_top_k(opts.get("top_k", 40))
            chain.add_typical(opts.get("typical_p", 1.0), 1)
            chain.add_top_p(opts.get("top_p", 0.95), 1)
            chain.add_min_p(opts.get("min_p", 0.05), 1)
            chain.add_temp(temp)
            chain.add_dist(seed)
        return chain

    def is_end(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.model.vocab, token))

    def piece(self, token: int) -> bytes:
        piece: bytes = self.model.detokenize([token])
        return piece

    def forget(self, seq_id: int) -> None:
        """Free every KV cell of a sequence."""
        self._lib.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    def share(self, src: int, dst: int, n_tokens: int) -> None:
        """Give `dst` (a sequence with no cells) the cells of `src`'s first `n_tokens`
        positions: llama.cpp copies whole streams between sequences (the copy runs at the
        start of the next decode), then `dst` drops the positions past the prefix."""
        self._lib.llama_memory_seq_cp(self.memory, src, dst, -1, -1)
        self._lib.llama_memory_seq_rm(self.memory, dst, n_tokens, -1)

    def decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """Decode one batch of `(token, position, seq_id, wants_logits)` entries."""
        batch = self.batch.batch
        for i, (token, pos, seq_id, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        code = self._lib.llama_decode(self.ctx.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    def sample(self, chain: Any, index: int) -> int:
        token: int = chain.sample(self.ctx, index)
        return token

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()
        self.model.close()


def _chat_handler(model: Any) -> Any:
    """The chat handler `Llama` picks for this model (same rules as `Llama.__init__`)."""
    from llama_cpp import llama_chat_format

    metadata: dict[str, str] = {}
    try:
        metadata = model.metadata()
    except Exception:
        metadata = {}
    eos_id, bos_id = model.token_eos(), model.token_bos()
    eos = model.token_get_text(eos_id) if eos_id != -1 else ""
    bos = model.token_get_text(bos_id) if bos_id != -1 else ""
    templates = {
        name[10:]: template
        for name, template in metadata.items()
        if name.startswith("tokenizer.chat_template.")
    }
    if "tokenizer.chat_template" in metadata:
        templates["chat_template.default"] = metadata["tokenizer.chat_template"]
    handlers = {
        name: llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id]
        ).to_chat_handler()
        for name, template in templates.items()
    }
    chat_format: str | None = None
    if "chat_template.default" in templates:
        chat_format = llama_chat_format.guess_chat_format_from_gguf_metadata(metadata)
        chat_format = chat_format or "chat_template.default"
    chat_format = chat_format or "llama-2"
    return handlers.get(chat_format) or llama_chat_format.get_chat_completion_handler(chat_format)
