"""Provider routing, credentials and secret hygiene, through litellm over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CANARY_KEY
from pydantic import SecretStr

from moa import (
    AuthenticationError,
    MissingCredentialsError,
    MixtureOfAgents,
    RateLimitError,
    Settings,
    create_moa_from_config,
)
from moa.neurons.llm import LLMConfig, LLMNeuron, resolve_route
from moa.testing import FakeProvider, Reply

Build = Callable[..., MixtureOfAgents]

ONE = {
    "proposal_layers": [{"neurons": [{"model": "meta-llama/M"}]}],
    "aggregation_layer": {"model": "meta-llama/AGG"},
}


def route(settings: Settings, **config: object) -> tuple[str, str | None, str | None]:
    r = resolve_route(LLMConfig(**config), settings)  # type: ignore[arg-type]
    return r.model, r.api_base, r.api_key.get_secret_value() if r.api_key else None


def test_bare_names_go_to_base_url_with_provider_key() -> None:
    s = Settings(provider_api_key=SecretStr("k1"))
    assert route(s, model="meta-llama/Llama-3") == (
        "openai/meta-llama/Llama-3",
        "https://api.together.xyz/v1",
        "k1",
    )


def test_prefixed_models_go_to_litellm_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert route(s, model="anthropic/claude-3-5-haiku") == (
        "anthropic/claude-3-5-haiku",
        None,
        None,
    )
    assert route(s, model="ollama/llama3") == ("ollama/llama3", None, None)
    monkeypatch.setenv("GROQ_KEY_FOR_TEAM", "gk")
    assert route(s, model="groq/llama", api_key_env="GROQ_KEY_FOR_TEAM") == (
        "groq/llama",
        None,
        "gk",
    )


def test_per_neuron_base_url_and_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(provider_api_key=SecretStr("k1"))
    monkeypatch.setenv("OTHER_KEY", "k2")
    assert route(s, model="x/y", base_url="https://other.example/v1", api_key_env="OTHER_KEY") == (
        "openai/x/y",
        "https://other.example/v1",
        "k2",
    )
    # a local OpenAI-compatible server needs no key
    assert route(Settings(), model="qwen2.5:7b", base_url="http://127.0.0.1:11434/v1")[1] == (
        "http://127.0.0.1:11434/v1"
    )


def test_missing_key_is_raised_before_any_call(fake: FakeProvider) -> None:
    with pytest.raises(MissingCredentialsError) as caught:
        create_moa_from_config(ONE, settings=Settings())
    assert caught.value.variable == "PROVIDER_API_KEY"
    assert "PROVIDER_API_KEY" in str(caught.value) and "proposal_layers[0].neurons[0]" in str(
        caught.value
    )
    assert fake.requests == []


def test_missing_named_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    config = {
        "proposal_layers": [{"neurons": [{"model": "openai/gpt-4o", "api_key_env": "MY_OPENAI"}]}],
        "aggregation_layer": {"model": "openai/gpt-4o", "api_key_env": "MY_OPENAI"},
    }
    with pytest.raises(MissingCredentialsError, match="MY_OPENAI"):
        create_moa_from_config(config, settings=Settings())
    monkeypatch.setenv("MY_OPENAI", "sk-x")
    create_moa_from_config(config, settings=Settings())


def test_settings_read_env_local_over_env_and_environment_over_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        "PROVIDER_API_KEY=from-env-file\nBASE_URL=http://a.example/v1\nTEAM_KEY=t1\n"
    )
    (tmp_path / ".env.local").write_text("PROVIDER_API_KEY=from-env-local\n")
    settings = Settings()
    assert settings.provider_api_key is not None
    assert settings.provider_api_key.get_secret_value() == "from-env-local"
    assert settings.base_url == "http://a.example/v1"
    assert settings.secret("TEAM_KEY") == "t1"
    monkeypatch.setenv("PROVIDER_API_KEY", "from-environment")
    assert Settings().secret("PROVIDER_API_KEY") == "from-environment"
    assert "from-env" not in repr(Settings())


async def test_env_local_drives_a_real_run(tmp_path: Path, fake: FakeProvider) -> None:
    (tmp_path / ".env.local").write_text(
        f"PROVIDER_API_KEY={CANARY_KEY}\nBASE_URL={fake.base_url}\n"
    )
    moa = create_moa_from_config(ONE)
    result = await moa.process("hi")
    assert result.content == "answer from meta-llama/AGG"
    assert fake.requests[0].headers.get("authorization") == f"Bearer {CANARY_KEY}"
    assert fake.requests[0].model == "meta-llama/M"  # the bare name reaches the endpoint as is


async def test_prefixed_model_with_base_url_keeps_its_provider(fake: FakeProvider) -> None:
    config = {
        "proposal_layers": [{"neurons": [{"model": "openai/gpt-x", "base_url": fake.base_url}]}],
        "aggregation_layer": {"model": "plain", "base_url": fake.base_url},
    }
    result = await create_moa_from_config(config, settings=Settings()).process("hi")
    assert [r.model for r in fake.requests] == ["gpt-x", "plain"]
    assert result.content == "answer from plain"


@pytest.mark.parametrize(
    ("reply", "error_type"),
    [
        (Reply(status=401, error_message=f"invalid key {CANARY_KEY}"), "AuthenticationError"),
        (
            Reply(status=429, retry_after=2, error_message=f"slow down {CANARY_KEY}"),
            "RateLimitError",
        ),
        (Reply(status=500, error_message=f"boom {CANARY_KEY}"), "ProviderError"),
        (Reply(fault="empty_choices"), "InvalidResponseError"),
        (Reply(fault="null_content"), "InvalidResponseError"),
        (Reply(fault="empty_content"), "InvalidResponseError"),
        (Reply(fault="malformed"), "InvalidResponseError"),
    ],
)
async def test_failures_are_typed_and_never_leak_the_key(
    fake: FakeProvider,
    build: Build,
    reply: Reply,
    error_type: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.script("meta-llama/BAD", reply)
    moa = build(
        {
            "proposal_layers": [
                {"neurons": [{"model": "meta-llama/M"}, {"model": "meta-llama/BAD"}]}
            ],
            "aggregation_layer": {"model": "meta-llama/AGG"},
        }
    )
    result = await moa.process("hi")
    bad = result.layers[0].neurons[1]
    assert bad.error_type == error_type and bad.text is None
    everything = result.model_dump_json() + repr(result) + repr(moa.neurons) + caplog.text
    assert CANARY_KEY not in everything
    assert CANARY_KEY not in repr(moa.settings) + moa.config.model_dump_json()


async def test_error_classes_carry_context(fake: FakeProvider, moa_settings: Settings) -> None:
    from moa.neurons.base import NeuronRequest

    neuron = LLMNeuron.create(
        LLMConfig(model="m/x"), settings=moa_settings, path="proposal_layers[0].neurons[0]"
    )
    request = NeuronRequest(messages=({"role": "user", "content": "hi"},))
    fake.script("m/x", Reply(status=429, retry_after=1.5), Reply(status=403))
    with pytest.raises(RateLimitError) as limited:
        await neuron.generate(request)
    assert limited.value.status_code == 429 and limited.value.retry_after == 1.5
    assert limited.value.neuron == "proposal_layers[0].neurons[0]" and limited.value.model == "m/x"
    # the litellm exception (which holds the request and its headers) is not kept
    assert limited.value.__context__ is None and limited.value.__cause__ is None
    with pytest.raises(AuthenticationError):
        await neuron.generate(request)
    assert CANARY_KEY not in repr(neuron)
