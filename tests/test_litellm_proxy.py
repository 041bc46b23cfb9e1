"""README's "From litellm" proxy setup, end to end: `litellm --config` on 127.0.0.1 with the
README's config and command, called with the official `openai` client, streamed and not.

Needs litellm's proxy extra (`pip install 'litellm[proxy]'`); skipped without it, unless
`MOA_REQUIRE_LITELLM_PROXY=1` (CI's proxy environment) turns the skip into a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from moa.testing import FakeProvider
from tests.conftest import CANARY_KEY, EXAMPLES, ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README.split("### From litellm", 1)[1].split("\n## ", 1)[0]
MISSING = [
    m for m in ("fastapi", "backoff", "apscheduler", "openai") if not importlib.util.find_spec(m)
]

pytestmark = [
    pytest.mark.litellm_proxy,
    pytest.mark.skipif(
        bool(MISSING) and os.environ.get("MOA_REQUIRE_LITELLM_PROXY") != "1",
        reason=f"litellm's proxy extra is not installed (missing {', '.join(MISSING)})",
    ),
]


def block(language: str, containing: str) -> str:
    """The README code block of `language` in the "From litellm" section holding `containing`."""
    blocks = [b.split("\n```", 1)[0] for b in SECTION.split(f"```{language}\n")[1:]]
    return next(b for b in blocks if containing in b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def proxy(fake: FakeProvider, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """README's proxy command, run in a directory holding README's `litellm_config.yaml`,
    with the seed mixture's models sent to the fake provider. Yields its URL and key."""
    assert not MISSING, f"MOA_REQUIRE_LITELLM_PROXY=1 but {MISSING} are not installed"
    (tmp_path / "litellm_config.yaml").write_text(block("yaml", "custom_provider_map"))
    script = block("bash", "litellm --config")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM_", "MOA_"))}
    for line in script.splitlines():  # the README's `export NAME=value` lines
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value.replace("examples/", f"{EXAMPLES}/")
    command = next(line for line in script.splitlines() if line.startswith("litellm "))
    argv = shlex.split(command)
    assert argv[argv.index("--host") + 1] == "127.0.0.1", "README's proxy must bind loopback"
    port = free_port()
    argv[argv.index("--port") + 1] = str(port)
    # the `litellm` script of this interpreter's environment (activated or not)
    argv[0] = shutil.which("litellm", path=str(Path(sys.executable).parent)) or "litellm"
    env.update(
        BASE_URL=fake.base_url,
        PROVIDER_API_KEY=CANARY_KEY,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_OFFLINE_MODE="true",
        LITELLM_TELEMETRY="False",
        # the guard of this process does not reach the proxy's: any non-loopback HTTP call it
        # tries goes to a dead loopback proxy and fails instead of leaving the machine
        HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
        ALL_PROXY="http://127.0.0.1:9", NO_PROXY="127.0.0.1,localhost",
    )  # fmt: skip
    assert env["LITELLM_MASTER_KEY"]  # README exports it
    log = (tmp_path / "proxy.log").open("w")
    server = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # importing the proxy takes long on a busy machine
        while True:
            if server.poll() is not None:
                pytest.fail(f"litellm proxy exited {server.returncode}:\n{_tail(tmp_path)}")
            try:
                with urllib.request.urlopen(f"{url}/health/liveliness", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"litellm proxy did not start:\n{_tail(tmp_path)}")
            time.sleep(0.5)
        yield url, env["LITELLM_MASTER_KEY"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _tail(directory: Path) -> str:
    return (directory / "proxy.log").read_text(errors="replace")[-3000:]


MODELS = {
    "annotator": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
    "proposers": [
        "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        "mistralai/Mixtral-8x22B-Instruct-v0.1",
        "Qwen/Qwen2-72B-Instruct",
    ],
    "aggregator": "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo",
}


def test_readme_proxy_config_runs_the_mixture(proxy: tuple[str, str], fake: FakeProvider) -> None:
    from openai import APIStatusError, OpenAI

    url, key = proxy
    fake.respond_with(None, lambda req: f"answer from {req.model}")
    fake.script(MODELS["aggregator"], "the synthesis", "the streamed synthesis")
    client = OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)

    reply = client.chat.completions.create(
        model="research", messages=[{"role": "user", "content": "Why is the sky blue?"}]
    )
    assert reply.choices[0].message.content == "the synthesis"
    after_one = len(fake.requests)
    for model in {MODELS["annotator"], *MODELS["proposers"], MODELS["aggregator"]}:
        assert fake.requests_for(model), f"{model} was not called"
    aggregator_call = fake.requests_for(MODELS["aggregator"])[-1]
    assert "answer from" in (aggregator_call.last_user or "")  # it saw the proposals
    assert CANARY_KEY not in reply.model_dump_json()

    chunks = list(
        client.chat.completions.create(
            model="research",
            messages=[{"role": "user", "content": "And at sunset?"}],
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "the streamed synthesis"
    assert len(fake.requests) == 2 * after_one  # the whole mixture ran again
    assert fake.requests_for(MODELS["aggregator"])[-1].stream

    # another key is refused (401, or 400 "No connected db": without a database the proxy
    # knows no key but the master key)
    stranger = OpenAI(base_url=url, api_key="sk-wrong", max_retries=0, timeout=60)
    with pytest.raises(APIStatusError) as refused:
        stranger.chat.completions.create(
            model="research", messages=[{"role": "user", "content": "x"}]
        )
    assert refused.value.status_code in (400, 401)
    assert len(fake.requests) == 2 * after_one  # refused before any model was called
