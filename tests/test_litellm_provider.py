"""`litellm.completion(model="moa/<name>")` runs a mixture (moa as a litellm custom provider)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moa.testing import FakeProvider, Reply
from tests.conftest import CANARY_KEY

CONFIG = """
proposal_layers:
  - neurons:
    - {model: "lp/A"}
    - {model: "lp/B"}
aggregation_layer:
  model: "lp/AGG"
"""
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def provider(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """The provider module, with `mix` registered from a config file; unregistered after."""
    monkeypatch.setenv("BASE_URL", fake.base_url)
    monkeypatch.setenv("PROVIDER_API_KEY", CANARY_KEY)
    monkeypatch.setenv("MOA_MAX_RETRIES", "0")
    (tmp_path / "mix.yaml").write_text(CONFIG)
    from moa import litellm_provider

    litellm_provider.register({"mix": tmp_path / "mix.yaml"})
    try:
        yield litellm_provider
    finally:
        litellm_provider.unregister()


def script(fake: FakeProvider, answer: str) -> None:
    fake.script("lp/A", Reply("alpha", usage=(1, 2)))
    fake.script("lp/B", Reply("beta", usage=(3, 4)))
    fake.script("lp/AGG", Reply(answer, usage=(5, 6)))


def test_completion_runs_the_mixture(provider: Any, fake: FakeProvider) -> None:
    import litellm

    script(fake, "mixed answer")
    response = litellm.completion(model="moa/mix", messages=HI)
    assert response.choices[0].message.content == "mixed answer"
    assert response.choices[0].finish_reason == "stop"
    assert response.model == "moa/mix"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (9, 12)
    assert fake.requests_for("lp/A")[0].last_user == "hi"
    assert "alpha" in (fake.requests_for("lp/AGG")[0].last_user or "")


def test_streaming_completion(provider: Any, fake: FakeProvider) -> None:
    import litellm

    script(fake, "streamed answer")
    chunks = list(
        litellm.completion(
            model="moa/mix", messages=HI, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed answer"
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 12)


async def test_async_completion_and_streaming(provider: Any, fake: FakeProvider) -> None:
    import litellm

    script(fake, "async answer")
    response = await litellm.acompletion(model="moa/mix", messages=HI)
    assert response.choices[0].message.content == "async answer"
    script(fake, "async stream")
    stream = await litellm.acompletion(model="moa/mix", messages=HI, stream=True)
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == "async stream"


def test_failures_map_to_litellm_exceptions(provider: Any, fake: FakeProvider) -> None:
    import litellm

    fake.script("lp/A", Reply(status=429, error_message="too fast"))
    fake.script("lp/B", Reply(status=429, error_message="too fast"))
    with pytest.raises(litellm.RateLimitError, match="too fast"):
        litellm.completion(model="moa/mix", messages=HI)
    fake.script("lp/A", Reply(status=500))
    fake.script("lp/B", Reply(status=401, error_message=f"bad key {CANARY_KEY}"))
    with pytest.raises(litellm.BadGatewayError) as caught:
        litellm.completion(model="moa/mix", messages=HI)
    assert caught.value.status_code == 502
    assert CANARY_KEY not in str(caught.value)
    with pytest.raises(litellm.NotFoundError, match=r"no moa mixture named 'nope'.*known: mix"):
        litellm.completion(model="moa/nope", messages=HI)


def test_mixtures_from_the_environment_and_from_a_path(
    provider: Any, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import litellm

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "other.yaml").write_text(CONFIG.replace("lp/AGG", "lp/OTHER"))
    monkeypatch.setenv("MOA_LITELLM_CONFIGS", f"x=y.yaml,other={tmp_path / 'configs/other.yaml'}")
    response = litellm.completion(model="moa/other", messages=HI)
    assert response.choices[0].message.content == "answer from lp/OTHER"
    # a path relative to the working directory, with the opt-in
    monkeypatch.setenv("MOA_LITELLM_ALLOW_PATHS", "1")
    response = litellm.completion(model="moa/configs/other.yaml", messages=HI)
    assert response.choices[0].message.content == "answer from lp/OTHER"
    assert provider.resolve("moa/other") is provider.resolve("other")  # built once


def test_register_is_idempotent(provider: Any) -> None:
    import litellm

    provider.register()
    provider.register()
    assert [e["provider"] for e in litellm.custom_provider_map].count("moa") == 1


def test_unregister_removes_every_trace(provider: Any, fake: FakeProvider) -> None:
    import litellm

    litellm.completion(model="moa/mix", messages=HI)  # litellm lists the provider on first use
    provider.unregister()
    assert "moa" not in litellm.provider_list and "moa" not in litellm._custom_providers
    assert all(e["provider"] != "moa" for e in litellm.custom_provider_map)


async def test_sync_completion_inside_a_running_event_loop(
    provider: Any, fake: FakeProvider
) -> None:
    """Sync callers inside async code (notebooks, agents) work: the run has its own loop."""
    import litellm

    script(fake, "from inside a loop")
    response = litellm.completion(model="moa/mix", messages=HI)
    assert response.choices[0].message.content == "from inside a loop"
    script(fake, "streamed inside a loop")
    chunks = litellm.completion(model="moa/mix", messages=HI, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "streamed inside a loop"
