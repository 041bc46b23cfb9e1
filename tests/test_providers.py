"""The static provider-prefix snapshot must match the installed litellm."""

from moa.neurons.llm import load_litellm
from moa.neurons.llm._providers import LITELLM_PROVIDERS


def test_snapshot_matches_installed_litellm() -> None:
    litellm = load_litellm()
    live = {getattr(p, "value", p) for p in litellm.provider_list}
    assert set(LITELLM_PROVIDERS) == live, (
        "litellm's providers changed: regenerate moa/neurons/_providers.py "
        f"(missing {sorted(live - LITELLM_PROVIDERS)}, stale {sorted(LITELLM_PROVIDERS - live)})"
    )


def test_seed_model_names_are_not_provider_prefixes() -> None:
    for model in (
        "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        "mistralai/Mixtral-8x22B-Instruct-v0.1",
        "Qwen/Qwen2-72B-Instruct",
        "deepseek-ai/DeepSeek-V3",
    ):
        assert model.split("/")[0] not in LITELLM_PROVIDERS
