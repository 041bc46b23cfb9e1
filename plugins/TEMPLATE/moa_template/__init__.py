"""moa-llm neuron type `template`: greets, then repeats the question and counts the answers
it was given. Replace the body of `generate` with your model, tool or rule.

The `moa` entry point in pyproject.toml names this module; moa imports it on its first
registry lookup and calls `register_neurons`. Keep it cheap to import: import heavy
libraries inside `prepare()` or `generate()`, not at the top of the module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from moa import Generation, Neuron, NeuronConfig, NeuronRequest, hookimpl
from moa.hookspecs import RegisterNeuron

__all__ = ["TemplateConfig", "TemplateNeuron"]


class TemplateConfig(NeuronConfig):
    """The YAML keys of a `template` neuron, validated (unknown keys are rejected).

    `type`, `name`, `prompt` and `weight` come from `NeuronConfig`.
    """

    type: Literal["template"] = "template"
    greeting: str = Field(default="Hello", min_length=1, description="How answers start.")
    shout: bool = Field(default=False, description="Answer in capitals.")


class TemplateNeuron(Neuron):
    """One neuron type: a `Config` and one async method."""

    Config = TemplateConfig
    config: TemplateConfig

    async def generate(self, request: NeuronRequest) -> Generation:
        # request.messages: the chat to send to a model (this neuron's prompt first)
        # request.history: the conversation; request.references: the previous layer's answers
        question = request.history[-1]["content"]
        text = (
            f"{self.config.greeting}! You asked: {question} "
            f"({len(request.references)} earlier answers)"
        )
        # Raise a moa.NeuronError subclass for a failure the mixture should survive.
        return Generation(text=text.upper() if self.config.shout else text)


@hookimpl
def register_neurons(register: RegisterNeuron) -> None:
    register("template", TemplateNeuron)
