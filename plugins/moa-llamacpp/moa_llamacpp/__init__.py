"""moa-llm neuron type `llamacpp`: a local GGUF chat model, in-process, no server, no key.

    - type: llamacpp
      model_path: ~/models/qwen2.5-0.5b-instruct-q4_k_m.gguf   # default: SmolLM2-135M
      temperature: 0.2
      max_tokens: 256

Importing this module (as the `moa` entry point does) is cheap: llama-cpp-python is imported
on the model's worker thread when a model is first loaded. `LOCAL_PRESET` is a ready mixture
of three proposers and an aggregator on the default model.
"""

from __future__ import annotations

from pathlib import Path

from moa import hookimpl
from moa.hookspecs import RegisterNeuron
from moa_llamacpp._models import (
    DEFAULT_GGUF,
    GGUFLoadError,
    ModelKey,
    SharedModel,
    default_model_path,
    default_threads,
    loaded_models,
    physical_cores,
    unload_models,
)
from moa_llamacpp._neuron import LlamaCppConfig, LlamaCppError, LlamaCppNeuron

__all__ = [
    "DEFAULT_GGUF",
    "LOCAL_PRESET",
    "GGUFLoadError",
    "LlamaCppConfig",
    "LlamaCppError",
    "LlamaCppNeuron",
    "ModelKey",
    "SharedModel",
    "default_model_path",
    "default_threads",
    "loaded_models",
    "physical_cores",
    "unload_models",
]

LOCAL_PRESET = Path(__file__).with_name("local.yaml")
"""The `local` preset: 3 proposers with different system prompts and temperatures, and an
aggregator, all `type: llamacpp` on the default model (SmolLM2-135M-Instruct)."""


@hookimpl
def register_neurons(register: RegisterNeuron) -> None:
    register("llamacpp", LlamaCppNeuron)
