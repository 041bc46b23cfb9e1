"""Provider prefixes: the installed litellm's table once it is loaded, the snapshot before."""

import pytest
from pydantic import SecretStr

from moa import Settings
from moa.neurons.llm import LLMConfig, load_litellm, resolve_route
from moa.neurons.llm import _litellm as transport
from moa.neurons.llm._providers import LITELLM_PROVIDERS, SNAPSHOT_VERSION, providers


def test_snapshot_matches_the_litellm_it_was_taken_from() -> None:
    litellm = load_litellm()
    from importlib.metadata import version

    if version("litellm") != SNAPSHOT_VERSION:
        pytest.skip(f"snapshot is of litellm {SNAPSHOT_VERSION}, {version('litellm')} installed")
    live = providers(litellm)
    assert set(LITELLM_PROVIDERS) == live, (
        "litellm's providers changed: regenerate moa/neurons/llm/_providers.py "
        f"(missing {sorted(live - LITELLM_PROVIDERS)}, stale {sorted(LITELLM_PROVIDERS - live)})"
    )


def test_the_loaded_litellm_decides_routing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider the snapshot does not know (a newer litellm's) goes to litellm as is once
    litellm is loaded; before, it is a bare name for BASE_URL."""
    litellm = load_litellm()
    settings = Settings(provider_api_key=SecretStr("k"))
    config = LLMConfig(model="brandnewprovider/some-model")
    monkeypatch.setattr(litellm, "provider_list", [*litellm.provider_list, "brandnewprovider"])
    assert resolve_route(config, settings).model == "brandnewprovider/some-model"
    assert resolve_route(config, settings).api_base is None
    monkeypatch.setattr(transport, "_litellm", None)  # as before the first call loads litellm
    assert resolve_route(config, settings).model == "openai/brandnewprovider/some-model"


def test_common_prefixes_are_in_every_table() -> None:
    for table in (LITELLM_PROVIDERS, providers(load_litellm())):
        assert {"openai", "anthropic", "groq", "ollama", "together_ai", "bedrock"} <= table


def test_seed_model_names_are_not_provider_prefixes() -> None:
    for model in (
        "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        "mistralai/Mixtral-8x22B-Instruct-v0.1",
        "Qwen/Qwen2-72B-Instruct",
        "deepseek-ai/DeepSeek-V3",
    ):
        for table in (LITELLM_PROVIDERS, providers(load_litellm())):
            assert model.split("/")[0] not in table
