"""Neuron type `echo`: answers with a prefix, the last user turn and how many references it saw."""

from typing import Literal

from moa import Generation, Neuron, NeuronConfig, NeuronRequest, hookimpl


class EchoNeuron(Neuron):
    class Config(NeuronConfig):
        type: Literal["echo"] = "echo"
        prefix: str = "echo"

    async def generate(self, request: NeuronRequest) -> Generation:
        assert isinstance(self.config, EchoNeuron.Config)
        last_user = [m["content"] for m in request.history if m["role"] == "user"][-1]
        return Generation(
            text=f"{self.config.prefix}: {last_user} (refs={len(request.references)})"
        )


@hookimpl
def register_neurons(register):
    register("echo", EchoNeuron)
