"""The fast path: litellm resolves, moa calls OpenAI-compatible endpoints itself.

The same behaviour must hold on both paths, so the key cases run with MOA_FAST_PATH on and off.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import CANARY_KEY, HANG_GUARD
from pydantic import SecretStr

from moa import Settings, create_moa_from_config
from moa.neurons.base import NeuronRequest
from moa.neurons.llm import LLMConfig, LLMNeuron, load_litellm
from moa.testing import FakeProvider, Reply

REQUEST = NeuronRequest(messages=({"role": "user", "content": "one two three"},))


@pytest.fixture(params=["fast", "litellm"])
def path_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MOA_FAST_PATH", "1" if request.param == "fast" else "0")
    return str(request.param)


def neuron(fake: FakeProvider, **config: object) -> LLMNeuron:
    settings = Settings(provider_api_key=SecretStr(CANARY_KEY), base_url=fake.base_url, max_retries=0)
    return LLMNeuron.create(LLMConfig(**{"model": "m/x", **config}), settings=settings, path="p")  # type: ignore[arg-type]


async def test_openai_compatible_routes_take_the_fast_path(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAM_KEY", "sk-team")
    for n in (neuron(fake), neuron(fake, model="together_ai/meta-llama/L", base_url=fake.base_url, api_key_env="TEAM_KEY"),
              neuron(fake, model="openai/gpt-4o-mini", base_url=fake.base_url)):
        await n.prepare()
        assert n.fast_path, n
    monkeypatch.setenv("MOA_FAST_PATH", "0")
    slow = neuron(fake)
    await slow.prepare()
    assert not slow.fast_path


async def test_same_answer_usage_and_request_on_both_paths(fake: FakeProvider, path_mode: str) -> None:
    n = neuron(fake, temperature=0.3, max_tokens=50, params={"top_p": 0.5, "stop": ["END"]})
    generation = await n.generate(REQUEST)
    assert generation.text == "answer from m/x"
    assert generation.usage is not None
    assert (generation.usage.prompt_tokens, generation.usage.completion_tokens) == (3, 3)
    (sent,) = fake.requests
    assert sent.body is not None
    body = dict(sent.body)
    assert body["model"] == "m/x" and body["messages"] == [{"role": "user", "content": "one two three"}]
    assert (body["temperature"], body["max_tokens"], body["top_p"], body["stop"]) == (0.3, 50, 0.5, ["END"])
    assert sent.headers["authorization"] == f"Bearer {CANARY_KEY}"


@pytest.mark.parametrize(
    ("reply", "error_type", "status"),
    [
        (Reply(status=401, error_message=f"bad key {CANARY_KEY}"), "AuthenticationError", 401),
        (Reply(status=429, retry_after=3, error_message="slow"), "RateLimitError", 429),
        (Reply(status=503), "ProviderError", 503),
        (Reply(status=400, error_message="bad request"), "ProviderError", 400),
        (Reply(fault="empty_choices"), "InvalidResponseError", None),
        (Reply(fault="empty_content"), "InvalidResponseError", None),
        (Reply(fault="reset"), "ProviderConnectionError", None),
    ],
)
async def test_errors_map_the_same_on_both_paths(
    fake: FakeProvider, path_mode: str, reply: Reply, error_type: str, status: int | None
) -> None:
    fake.script("m/x", reply)
    n = neuron(fake)
    with pytest.raises(Exception) as caught:
        await n.generate(REQUEST)
    error = caught.value
    assert type(error).__name__ == error_type
    assert getattr(error, "status_code", None) == status
    assert getattr(error, "model", None) == "m/x"
    assert CANARY_KEY not in str(error) + repr(error)
    if error_type == "RateLimitError":
        assert error.retry_after == 3  # type: ignore[attr-defined]


async def test_timeout_on_the_fast_path(fake: FakeProvider) -> None:
    from moa import TimeoutError as MoATimeout

    fake.script("m/x", Reply(fault="hang"))
    with pytest.raises(MoATimeout):
        await neuron(fake, timeout=0.3).generate(REQUEST)
    fake.wait_for_requests(1)


async def test_cost_of_a_known_model_matches_litellm(fake: FakeProvider) -> None:
    n = neuron(fake, model="openai/gpt-4o-mini", base_url=fake.base_url)
    generation = await n.generate(REQUEST)
    assert n.fast_path and generation.usage is not None
    prompt_cost, completion_cost = load_litellm().cost_per_token(
        model="gpt-4o-mini", prompt_tokens=generation.usage.prompt_tokens,
        completion_tokens=generation.usage.completion_tokens,
    )
    assert generation.cost == pytest.approx(prompt_cost + completion_cost)
    unknown = await neuron(fake).generate(REQUEST)
    assert unknown.cost is None


def test_pooled_session_closes_itself_when_the_loop_ends(fake: FakeProvider, tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, warnings
        warnings.simplefilter("always")
        from moa import create_moa_from_config, Settings
        from pydantic import SecretStr
        moa = create_moa_from_config(
            {{"proposal_layers": [{{"neurons": [{{"model": "m/a"}}]}}], "aggregation_layer": {{"model": "m/b"}}}},
            settings=Settings(provider_api_key=SecretStr("k"), base_url="{fake.base_url}"))
        print(asyncio.run(moa.process("hi")).content)
        print(moa.process_sync("hi").content)
    """))
    out = subprocess.run([sys.executable, "-X", "dev", str(script)], capture_output=True, text=True,
                         timeout=HANG_GUARD, env={**os.environ, "PYTHONWARNINGS": "always"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["answer from m/b", "answer from m/b"]
    assert "Unclosed" not in out.stderr and "ResourceWarning" not in out.stderr, out.stderr


async def test_whole_mixture_on_the_fast_path(fake: FakeProvider, moa_settings: Settings) -> None:
    moa = create_moa_from_config({"proposal_layers": [{"neurons": [{"model": "m/a"}, {"model": "m/b"}]}],
                                  "aggregation_layer": {"model": "m/agg"}}, settings=moa_settings)
    result = await moa.process("q")
    assert all(getattr(n, "fast_path", False) for n in moa.neurons)
    assert result.content == "answer from m/agg" and result.usage.completion_tokens == 9


async def test_groq_models_take_the_fast_path(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    """litellm 1.110.2's own Groq handler fails on answers without `service_tier`; the fast
    path sends groq/ models as the OpenAI-compatible calls they are."""
    monkeypatch.setenv("GROQ_TEAM_KEY", "sk-groq")
    n = neuron(fake, model="groq/llama-3.1-8b-instant", base_url=fake.base_url, api_key_env="GROQ_TEAM_KEY")
    generation = await n.generate(REQUEST)
    assert n.fast_path and generation.text == "answer from llama-3.1-8b-instant"
    assert fake.requests[0].headers["authorization"] == "Bearer sk-groq"
