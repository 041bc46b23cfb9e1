"""docs/writing-a-plugin.md's example plugin, moa-chatapi, installed for real (pip, entry
point) and run against the fake provider: every part of the plugin API it documents."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from moa import create_moa_from_config
from moa.cli import cli
from moa.plugins import get_neuron_class
from moa.testing import FakeProvider, Reply
from tests.conftest import CANARY_KEY, ROOT

EXAMPLE = ROOT / "docs" / "example-plugin"
GUIDE = (ROOT / "docs" / "writing-a-plugin.md").read_text(encoding="utf-8")


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CHATAPI_KEY", CANARY_KEY)
    return CANARY_KEY


def config(fake: FakeProvider, **aggregator: Any) -> dict[str, Any]:
    def neuron(model: str, **extra: Any) -> dict[str, Any]:
        return {"type": "chatapi", "model": model, "url": fake.base_url, **extra}

    return {
        "proposal_layers": [
            {
                "neurons": [
                    neuron("c/A", read_timeout=0.5, max_tokens=50),
                    neuron("c/B", max_tokens=50),
                ]
            }
        ],
        "aggregation_layer": neuron("c/AGG", **aggregator),
        "retry": {"max_retries": 1, "backoff_base": 0.01},
    }


def test_the_guide_shows_the_example_as_it_is() -> None:
    """The code in docs/writing-a-plugin.md is the code this test runs."""
    for path in ("pyproject.toml", "moa_chatapi/__init__.py"):
        source = (EXAMPLE / path).read_text(encoding="utf-8")
        assert source.strip() in GUIDE, f"docs/writing-a-plugin.md shows a stale {path}"


def test_installed_from_its_entry_point(chatapi: Path) -> None:
    import moa_chatapi

    assert get_neuron_class("chatapi") is moa_chatapi.ChatAPINeuron
    assert Path(moa_chatapi.__file__ or "").is_relative_to(chatapi)


def test_process_sync_twice_with_the_client_made_in_prepare(
    chatapi: Path, fake: FakeProvider, key: str
) -> None:
    """prepare() runs once per mixture; each process_sync() has its own event loop, and the
    LoopLocal gives each loop its own aiohttp session (no "Event loop is closed")."""
    fake.set_default(Reply(usage=(2, 3)))
    moa = create_moa_from_config(config(fake), is_file_path=False)
    first = moa.process_sync("hi")
    second = moa.process_sync("again")
    assert first.content == second.content == "answer from c/AGG"
    assert len(fake.requests_for("c/A")) == 2 and len(fake.requests_for("c/AGG")) == 2
    assert fake.requests_for("c/A")[0].headers["authorization"] == f"Bearer {key}"
    assert first.usage.prompt_tokens == 6 and first.usage.completion_tokens == 9


def test_a_timeout_in_its_http_call_fails_that_neuron_only(
    chatapi: Path, fake: FakeProvider, key: str
) -> None:
    """aiohttp raises the builtin TimeoutError (read_timeout): moa retries it, then leaves
    the neuron out; the mixture answers with the other one."""
    fake.script("c/A", Reply(fault="hang"), Reply(fault="hang"))
    moa = create_moa_from_config(config(fake), is_file_path=False)
    result = moa.process_sync("hi")
    assert result.content == "answer from c/AGG"
    (failed,) = [n for n in result.layers[0].neurons if n.error is not None]
    assert failed.model == "c/A" and failed.error_type == "TimeoutError" and failed.attempts == 2
    assert "timed out" in (failed.error or "")
    assert "answer from c/B" in (fake.requests_for("c/AGG")[0].last_user or "")


async def test_streams_and_maps_errors_with_the_key_redacted(
    chatapi: Path, fake: FakeProvider, key: str
) -> None:
    fake.script("c/A", Reply(status=401, error_message=f"bad key {key}"))
    fake.script("c/AGG", Reply("streamed, word by word", usage=(4, 5)))
    async with create_moa_from_config(config(fake), is_file_path=False) as moa:
        pieces = [piece async for piece in moa.stream_text("hi")]
    assert "".join(pieces) == "streamed, word by word" and len(pieces) > 1
    assert fake.requests_for("c/AGG")[0].stream
    body = fake.requests_for("c/A")[0].body or {}
    assert body["messages"][-1] == {"role": "user", "content": "hi"}


async def test_rate_limit_with_retry_after_then_fallback_by_model_name(
    chatapi: Path, fake: FakeProvider, key: str
) -> None:
    fake.script("c/A", Reply(status=429, retry_after=0), Reply(status=503), Reply(status=503))
    source = config(fake)
    source["proposal_layers"][0]["neurons"][0]["fallbacks"] = ["c/A2"]
    moa = create_moa_from_config(source, is_file_path=False)
    result = await moa.process("hi")
    first = result.layers[0].neurons[0]
    assert first.fallback == "c/A2" and first.text == "answer from c/A2"
    assert first.attempts == 3  # 429 retried, 503 given up on, then the fallback's one
    assert CANARY_KEY not in str(result.model_dump())


def test_validate_builds_neurons_and_checks_declared_keys(
    chatapi: Path, fake: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "proposal_layers:\n  - neurons:\n    - {type: chatapi, model: m, url: 'http://h/v1'}\n"
        "aggregation_layer: {type: chatapi, model: m, url: 'http://h/v1', key_env: AGG_KEY}\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        good.read_text().replace("'http://h/v1'}\n", "'http://h/v1/chat/completions'}\n", 1)
    )
    runner = CliRunner()
    assert runner.invoke(cli, ["validate", str(good)]).exit_code == 0
    result = runner.invoke(cli, ["validate", str(bad)])  # __init__'s ConfigError, no call made
    assert result.exit_code == 2
    assert "proposal_layers[0].neurons[0]: url: give the API's base URL" in result.output
    result = runner.invoke(cli, ["validate", "--check-keys", str(good)])
    assert result.exit_code == 2
    assert re.search(
        r"proposal_layers\[0\]\.neurons\[0\] \(m, type chatapi\) needs CHATAPI_KEY", result.output
    )
    assert "aggregation_layer (m, type chatapi) needs AGG_KEY" in result.output
    monkeypatch.setenv("CHATAPI_KEY", "k1")
    monkeypatch.setenv("AGG_KEY", "k2")
    assert runner.invoke(cli, ["validate", "--check-keys", str(good)]).exit_code == 0
    assert fake.requests == []


def test_token_limits_and_tokenizer_feed_the_context_check(
    chatapi: Path, fake: FakeProvider
) -> None:
    moa = create_moa_from_config(config(fake, context_window=8), is_file_path=False)
    assert "context window" in (moa.check_context_window() or "")
    assert create_moa_from_config(config(fake), is_file_path=False).check_context_window() is None


def test_the_guides_testing_example_passes(chatapi: Path, tmp_path: Path) -> None:
    """The pytest module under "Testing your plugin", run by pytest in a fresh process with
    the plugin installed (its fixtures come from moa's pytest11 entry point)."""
    section = GUIDE.split("## Testing your plugin", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("\n```", 1)[0]
    (tmp_path / "test_guide_example.py").write_text(snippet)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(chatapi), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
         "test_guide_example.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout
