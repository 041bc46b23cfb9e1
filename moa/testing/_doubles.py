"""Test doubles for neurons: `FakeNeuron` (neuron type `fake`) and the `FakeNeurons` registry.

A `fake` neuron answers, in order of preference, from its queue (`enqueue()`), from a
function (`respond_with(fn)`, the `FunctionModel` idea), or with a fixed default, and
records every request in `history`. No model, no network, no key::

    with fake_neurons() as fakes:                 # or the pytest fixture `moa_fake_neurons`
        moa = create_moa_from_config({
            "proposal_layers": [{"neurons": [{"type": "fake", "name": "a"},
                                             {"type": "fake", "name": "b"}]}],
            "aggregation_layer": {"type": "fake", "name": "judge"},
        }, is_file_path=False)
        fakes["a"].enqueue("first answer", ProviderError("down"))
        fakes["judge"].respond_with(lambda request: f"{len(request.references)} answers")
        result = await moa.process("question")
        fakes["a"].history[0].references   # what the neuron was given
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal

from pydantic import Field

from moa.config._models import NeuronConfig
from moa.hookspecs import RegisterNeuron, hookimpl
from moa.neurons.base import Generation, Neuron, NeuronRequest

__all__ = ["FakeNeuron", "FakeNeurons", "FakeReply", "fake_neurons"]

FakeReply = str | Generation | BaseException
"""What a fake neuron can be scripted to do: answer text, a full `Generation`, or raise."""

Responder = Callable[[NeuronRequest], "str | Generation | Awaitable[str | Generation]"]


class FakeNeuronConfig(NeuronConfig):
    """Options of a `fake` neuron."""

    type: Literal["fake"] = "fake"
    replies: list[str] = Field(default_factory=list, description="Answers to give first, in order.")
    default: str | None = Field(
        default=None,
        description="Answer once the queue is empty; default: 'fake answer from <label>'.",
    )


class FakeNeuron(Neuron):
    """A scripted neuron that records what it is asked. Thread-unsafe by design: for tests."""

    Config = FakeNeuronConfig
    config: FakeNeuronConfig
    registry: ClassVar[FakeNeurons | None] = None

    def __init__(self, config: NeuronConfig) -> None:
        super().__init__(config)
        self.queue: deque[FakeReply] = deque(self.config.replies)
        self.history: list[NeuronRequest] = []
        self.responder: Responder | None = None
        if self.registry is not None:
            self.registry.created.append(self)

    def enqueue(self, *replies: FakeReply) -> FakeNeuron:
        """Queue answers (text or `Generation`) or exceptions to raise, used one per call."""
        self.queue.extend(replies)
        return self

    def respond_with(self, fn: Responder) -> FakeNeuron:
        """Answer with `fn(request)` (sync or async) whenever the queue is empty."""
        self.responder = fn
        return self

    async def generate(self, request: NeuronRequest) -> Generation:
        self.history.append(request)
        if self.queue:
            reply: object = self.queue.popleft()
        elif self.responder is not None:
            reply = self.responder(request)
            if inspect.isawaitable(reply):
                reply = await reply
        else:
            reply = self.config.default or f"fake answer from {self.label}"
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, Generation):
            return reply
        return Generation(text=str(reply), model=self.label)


class FakeNeurons:
    """A plugin registering the `fake` type, and a record of the fake neurons it built.

    `fakes["label"]` is the one fake neuron with that label (its `name`), `fakes.created`
    every one in build order. Use `fake_neurons()` or the `moa_fake_neurons` fixture, which
    register it and unregister it afterwards.
    """

    type_name: ClassVar[str] = "fake"

    def __init__(self) -> None:
        self.created: list[FakeNeuron] = []
        owner = self

        class _Bound(FakeNeuron):
            registry = owner

        _Bound.__name__ = _Bound.__qualname__ = "FakeNeuron"
        self.neuron_class: type[FakeNeuron] = _Bound

    @hookimpl
    def register_neurons(self, register: RegisterNeuron) -> None:
        register(self.type_name, self.neuron_class)

    def __getitem__(self, label: str) -> FakeNeuron:
        found = [n for n in self.created if n.label == label]
        if len(found) != 1:
            known = ", ".join(repr(n.label) for n in self.created) or "none"
            raise KeyError(
                f"{len(found)} fake neurons are labelled {label!r} (built so far: {known})"
            )
        return found[0]

    def __iter__(self) -> Iterator[FakeNeuron]:
        return iter(list(self.created))

    def __len__(self) -> int:
        return len(self.created)


@contextmanager
def fake_neurons() -> Iterator[FakeNeurons]:
    """Register neuron type `fake` for the duration of the block, then unregister it."""
    from moa.plugins import get_plugin_manager, register_plugin, unregister_plugin

    fakes = FakeNeurons()
    name = register_plugin(fakes, name=f"moa.testing.fake-{id(fakes):x}")
    try:
        yield fakes
    finally:
        if get_plugin_manager().has_plugin(name):  # reload_plugins() may have dropped it
            unregister_plugin(name)
