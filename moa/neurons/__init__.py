"""Neurons: the units that answer. `Neuron` is the base class plugins subclass."""

from moa.neurons.base import ChatMessage, Generation, Neuron, NeuronRequest, Reference

__all__ = ["ChatMessage", "Generation", "Neuron", "NeuronRequest", "Reference"]
