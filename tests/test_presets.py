"""Zero-config: `moa.presets.resolve_default()` picks the seed config, the local preset, or
explains both options."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import EXAMPLES

from moa import ConfigError, PluginError, hookimpl, load_config
from moa.plugins import register_plugin, reload_plugins, unregister_plugin
from moa.presets import SEED_CONFIG, local_preset, resolve_default

has_llamacpp_plugin = importlib.util.find_spec("moa_llamacpp") is not None


@pytest.fixture
def fresh_plugins() -> Iterator[None]:
    reload_plugins()
    yield
    reload_plugins()


def test_seed_copy_is_identical_to_the_example() -> None:
    assert SEED_CONFIG.read_bytes() == (EXAMPLES / "moa_config.yaml").read_bytes()
    assert len(load_config(SEED_CONFIG).proposal_layers) == 2


def test_a_key_in_the_environment_picks_the_seed_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVIDER_API_KEY", "sk-test")
    source, message = resolve_default()
    assert source == SEED_CONFIG
    assert "PROVIDER_API_KEY is set" in message and "sk-test" not in message


def test_a_key_in_env_local_picks_the_seed_config(tmp_path: Path) -> None:
    (tmp_path / ".env.local").write_text(
        "PROVIDER_API_KEY=sk-test\nBASE_URL=http://127.0.0.1:9/v1\n"
    )
    source, message = resolve_default()  # conftest runs each test in tmp_path
    assert source == SEED_CONFIG
    assert "http://127.0.0.1:9/v1" in message


def test_an_empty_key_does_not_count(monkeypatch: pytest.MonkeyPatch, fresh_plugins: None) -> None:
    monkeypatch.setenv("PROVIDER_API_KEY", "")
    monkeypatch.setenv("MOA_LOAD_PLUGINS", "")
    with pytest.raises(ConfigError):
        resolve_default()


@pytest.mark.skipif(not has_llamacpp_plugin, reason="moa-llamacpp is not installed")
def test_no_key_and_the_local_plugin_picks_the_local_preset() -> None:
    import moa_llamacpp

    source, message = resolve_default()
    assert source == moa_llamacpp.LOCAL_PRESET == local_preset()
    assert message.startswith("no config and no PROVIDER_API_KEY: using the local preset")
    assert "(local.yaml from moa-llamacpp)" in message
    config = load_config(source)
    assert config.aggregation_layer.neuron.type == "llamacpp"


def test_neither_explains_both_options(
    monkeypatch: pytest.MonkeyPatch, fresh_plugins: None
) -> None:
    monkeypatch.setenv("MOA_LOAD_PLUGINS", "")  # as if no plugin were installed
    assert local_preset() is None
    with pytest.raises(ConfigError) as caught:
        resolve_default()
    message = str(caught.value)
    assert "PROVIDER_API_KEY" in message and ".env.local" in message
    assert "pip install -r requirements-local.txt" in message and "CMAKE_ARGS=" in message


class PresetPlugin:
    def __init__(self, path: Path) -> None:
        self.path = path

    @hookimpl
    def register_presets(self, register: Callable[[str, Path], None]) -> None:
        register("local", self.path)


def test_presets_come_through_the_register_presets_hook(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_plugins: None
) -> None:
    monkeypatch.setenv("MOA_LOAD_PLUGINS", "")  # only the plugin below
    preset = tmp_path / "mine.yaml"
    preset.write_text(SEED_CONFIG.read_text())
    plugin = PresetPlugin(preset)
    register_plugin(plugin, name="my-presets")
    try:
        assert local_preset() == preset
        source, message = resolve_default()
        assert source == preset and "(mine.yaml from my-presets)" in message
        clash = PresetPlugin(tmp_path / "other.yaml")
        register_plugin(clash, name="other-presets")
        with pytest.raises(PluginError, match="preset 'local' is registered twice"):
            local_preset()
        unregister_plugin(clash)
    finally:
        unregister_plugin(plugin)
    assert local_preset() is None
