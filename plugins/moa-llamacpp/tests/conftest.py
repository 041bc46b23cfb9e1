"""Every test of this plugin runs behind moa's network guard (a fixture of the `moa.testing`
pytest plugin, loaded automatically when moa-llm is installed): a local model needs none."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_network(moa_network_guard: list[str]) -> None:
    """Fail any test that tries to reach a non-loopback address."""
