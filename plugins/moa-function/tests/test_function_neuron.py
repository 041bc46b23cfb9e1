"""Neuron type `function`: sync and async callables, what they receive, and clear errors."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moa_function import FunctionConfig, FunctionNeuron

from moa import (
    AllNeuronsFailed,
    ConfigError,
    NeuronRequest,
    create_moa_from_config,
    load_config,
)
from moa.plugins import get_neuron_class, plugin_infos

# Every test here runs behind moa's network guard (a fixture of the pytest plugin that
# moa-llm installs): any connection outside 127.0.0.1 fails the test.
pytestmark = pytest.mark.usefixtures("moa_network_guard")

MODULE = "moa_function_test_answers"

SOURCE = """
import asyncio
from moa import Generation, NeuronError, Usage

calls = []

def shout(request, *, suffix="!"):
    calls.append(request)
    return request.history[-1]["content"].upper() + suffix

async def count_refs(request):
    await asyncio.sleep(0)
    texts = " | ".join(ref.text for ref in request.references)
    return f"{len(request.references)} refs: {texts}"

def which_thread(request):
    import threading
    return threading.current_thread().name

def system_prompt(request):
    return request.messages[0]["content"]

def with_usage(request):
    return Generation(text="counted", usage=Usage(prompt_tokens=3, completion_tokens=1))

def wrong_type(request):
    return 42

def empty(request):
    return "  "

def fails(request):
    raise NeuronError("backend down")

class Tools:
    @staticmethod
    def echo(request):
        return "tool: " + request.history[-1]["content"]

NOT_CALLABLE = "a string"
"""


@pytest.fixture
def answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    (tmp_path / "moa_function_broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module(MODULE)
    yield module
    sys.modules.pop(MODULE, None)
    sys.modules.pop("moa_function_broken", None)


def mixture(proposers: list[dict[str, Any]], aggregator: dict[str, Any]) -> Any:
    return create_moa_from_config(
        {"proposal_layers": [{"neurons": proposers}], "aggregation_layer": aggregator},
        is_file_path=False,
    )


def test_registered_through_the_installed_entry_point() -> None:
    assert get_neuron_class("function") is FunctionNeuron
    info = {i.name: i for i in plugin_infos()}["function"]
    assert (info.distribution, info.neuron_types, info.builtin) == (
        "moa-function",
        ("function",),
        False,
    )


async def test_sync_and_async_functions_in_a_mixture(answers: Any) -> None:
    moa = mixture(
        [
            {"type": "function", "callable": f"{MODULE}:shout", "options": {"suffix": "?"}},
            {"type": "function", "callable": f"{MODULE}:Tools.echo", "weight": 2},
        ],
        {"type": "function", "callable": f"{MODULE}:count_refs"},
    )
    result = await moa.process("hello")
    assert [n.text for n in result.layers[0].neurons] == ["HELLO?", "tool: hello"]
    # the aggregator sees every answer of the previous layer, highest weight first
    assert result.content == "2 refs: tool: hello | HELLO?"
    assert result.aggregator.model == f"{MODULE}:count_refs"


async def test_function_receives_the_messages_with_its_system_prompt(answers: Any) -> None:
    moa = mixture(
        [{"type": "function", "callable": f"{MODULE}:system_prompt", "prompt": "Be brief."}],
        {"type": "function", "callable": f"{MODULE}:shout", "in_thread": False},
    )
    result = await moa.process([{"role": "user", "content": "q"}])
    assert result.layers[0].neurons[0].text == "Be brief."
    request = answers.calls[-1]
    assert isinstance(request, NeuronRequest)
    assert [r.text for r in request.references] == ["Be brief."]


async def test_a_generation_keeps_its_usage(answers: Any) -> None:
    moa = mixture(
        [{"type": "function", "callable": f"{MODULE}:with_usage"}],
        {"type": "function", "callable": f"{MODULE}:with_usage"},
    )
    result = await moa.process("q")
    assert result.content == "counted"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (6, 2)


@pytest.mark.parametrize(
    ("name", "error_type"),
    [
        ("wrong_type", "InvalidResponseError"),
        ("empty", "InvalidResponseError"),
        ("fails", "NeuronError"),
    ],
)
async def test_a_failing_function_fails_only_its_neuron(
    answers: Any, name: str, error_type: str
) -> None:
    moa = mixture(
        [
            {"type": "function", "callable": f"{MODULE}:{name}"},
            {"type": "function", "callable": f"{MODULE}:shout"},
        ],
        {"type": "function", "callable": f"{MODULE}:count_refs"},
    )
    result = await moa.process("hi")
    failed = result.layers[0].neurons[0]
    assert failed.text is None and failed.error_type == error_type
    assert result.content == "1 refs: HI!"


async def test_every_function_failing_raises_all_neurons_failed(answers: Any) -> None:
    moa = mixture(
        [{"type": "function", "callable": f"{MODULE}:fails"}],
        {"type": "function", "callable": f"{MODULE}:shout"},
    )
    with pytest.raises(AllNeuronsFailed, match="backend down"):
        await moa.process("hi")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("moa_function_broken:fn", "RuntimeError: boom at import"),
        (f"{MODULE}:missing", f"'{MODULE}' has no attribute 'missing'"),
        (f"{MODULE}:Tools.nope", "has no attribute 'Tools.nope'"),
        (f"{MODULE}:NOT_CALLABLE", "is a str, not a function"),
    ],
)
def test_bad_callables_name_the_dotted_path(answers: Any, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        mixture(
            [{"type": "function", "callable": path}],
            {"type": "function", "callable": f"{MODULE}:shout"},
        )
    assert path in str(caught.value)
    assert message in str(caught.value)
    assert "proposal_layers[0].neurons[0]" in str(caught.value)


def test_the_path_must_have_a_module_and_a_name() -> None:
    with pytest.raises(ConfigError, match=r"proposal_layers\[0\]\.neurons\[0\]\.callable"):
        load_config(
            {
                "proposal_layers": [{"neurons": [{"type": "function", "callable": "no_colon"}]}],
                "aggregation_layer": {"model": "m"},
            }
        )


def test_label_is_the_callable_unless_named() -> None:
    assert FunctionConfig(callable="a.b:c").label == "a.b:c"
    assert FunctionConfig(callable="a.b:c", name="rules").label == "rules"


@pytest.mark.parametrize("in_thread", [True, False])
async def test_sync_functions_run_in_a_worker_thread_unless_told(
    answers: Any, in_thread: bool
) -> None:
    import threading

    moa = mixture(
        [{"type": "function", "callable": f"{MODULE}:which_thread", "in_thread": in_thread}],
        {"type": "function", "callable": f"{MODULE}:count_refs"},
    )
    result = await moa.process("q")
    on_loop = result.layers[0].neurons[0].text == threading.current_thread().name
    assert on_loop is not in_thread
