"""Test helpers for moa-llm and for code built on it: no network, no keys.

- `FakeProvider`: a real OpenAI-compatible HTTP server on 127.0.0.1 with scripted replies,
  latency, faults and streaming, recording every request.
- `block_network()`: refuses any connection outside loopback.
- `FakeNeuron` (neuron type `fake`, via `fake_neurons()`): scripted answers, recorded
  requests, or a function as the answer, with no model and no HTTP at all.
- The pytest plugin (`moa.testing.pytest_plugin`, auto-loaded) gives the fixtures
  `moa_fake_provider`, `moa_settings`, `moa_network_guard` and `moa_fake_neurons`.
"""

from moa.testing._doubles import FakeNeuron, FakeNeurons, fake_neurons
from moa.testing._guard import NetworkBlockedError, block_network, is_loopback_address
from moa.testing._server import FakeProvider, Fault, RecordedRequest, Reply

__all__ = [
    "FakeNeuron",
    "FakeNeurons",
    "FakeProvider",
    "Fault",
    "NetworkBlockedError",
    "RecordedRequest",
    "Reply",
    "block_network",
    "fake_neurons",
    "is_loopback_address",
]
