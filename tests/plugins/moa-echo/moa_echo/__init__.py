"""Neuron type `echo`: answers with a prefix, the last user turn and how many references it saw."""

from typing import Literal

from moa import Generation, Neuron, NeuronConfig, NeuronRequest, hookimpl


class EchoConfig(NeuronConfig):
    type: Literal["echo"] = "echo"
    prefix: str = "echo"


class EchoNeuron(Neuron):
    Config = EchoConfig
    config: EchoConfig  # Neuron.__init__ checks it is one

    async def generate(self, request: NeuronRequest) -> Generation:
        last_user = [m["content"] for m in request.history if m["role"] == "user"][-1]
        return Generation(
            text=f"{self.config.prefix}: {last_user} (refs={len(request.references)})"
        )


@hookimpl
def register_neurons(register):
    register("echo", EchoNeuron)
