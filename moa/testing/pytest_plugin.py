"""pytest fixtures for testing mixtures without a network (registered as a pytest11 plugin).

- `moa_fake_provider`: a `FakeProvider` on 127.0.0.1, shared by the session and reset before
  each test.
- `moa_settings`: `Settings` whose `BASE_URL` is the fake provider and whose key is a canary.
- `moa_network_guard`: fails the test if anything tried to reach a non-loopback address.
  Not autouse: request it, or make it autouse in your conftest.py (moa-llm's own tests do)::

      @pytest.fixture(autouse=True)
      def _no_network(moa_network_guard): ...

- `moa_fake_neurons`: registers neuron type `fake` for one test: scripted answers and
  recorded requests per neuron, no model at all (see `moa.testing.FakeNeuron`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from moa.settings import Settings
    from moa.testing import FakeNeurons, FakeProvider

CANARY_KEY = "sk-moa-canary-7f3a9c1e5b"


@pytest.fixture(scope="session")
def _moa_fake_provider_server() -> Iterator[FakeProvider]:
    from moa.testing import FakeProvider

    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def moa_fake_provider(_moa_fake_provider_server: FakeProvider) -> FakeProvider:
    """The loopback fake OpenAI-compatible provider, reset for this test."""
    _moa_fake_provider_server.reset()
    return _moa_fake_provider_server


@pytest.fixture
def moa_settings(moa_fake_provider: FakeProvider) -> Settings:
    """Settings sending bare model names to the fake provider with a canary API key."""
    from pydantic import SecretStr

    from moa.settings import Settings

    return Settings(
        provider_api_key=SecretStr(CANARY_KEY),
        base_url=moa_fake_provider.base_url,
        request_timeout=10.0,
        max_retries=0,
    )


@pytest.fixture
def moa_network_guard() -> Iterator[list[str]]:
    """Refuse non-loopback connections and fail the test if any was attempted."""
    from moa.testing import block_network

    with block_network() as violations:
        yield violations
    if violations:
        pytest.fail(f"test tried to reach the network: {violations}")


@pytest.fixture
def moa_fake_neurons() -> Iterator[FakeNeurons]:
    """Neuron type `fake` registered for this test (unregistered after): scripted answers
    (`enqueue`, `respond_with`) and recorded requests (`history`), looked up by label."""
    from moa.testing import fake_neurons

    with fake_neurons() as fakes:
        yield fakes
