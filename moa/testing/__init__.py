"""Test helpers for moa-llm and for code built on it: no network, no keys.

- `FakeProvider`: a real OpenAI-compatible HTTP server on 127.0.0.1 with scripted replies,
  latency, faults and streaming, recording every request.
- `block_network()`: refuses any connection outside loopback.
- The pytest plugin (`moa.testing.pytest_plugin`, auto-loaded) gives the fixtures
  `moa_fake_provider`, `moa_settings` and `moa_network_guard`.
"""

from moa.testing._guard import NetworkBlockedError, block_network, is_loopback_address
from moa.testing._server import FakeProvider, Fault, RecordedRequest, Reply

__all__ = [
    "FakeProvider",
    "Fault",
    "NetworkBlockedError",
    "RecordedRequest",
    "Reply",
    "block_network",
    "is_loopback_address",
]
