"""`litellm.completion(model="moa/<x>")` is not a file reader: only registered names and
`MOA_LITELLM_CONFIGS` by default, a path only with `MOA_LITELLM_ALLOW_PATHS=1` (or
`register(allow_paths=True)`) and only `.yaml` / `.yml`, and a config error names the key path
and the value's type, never the value."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moa.testing import FakeProvider
from tests.conftest import CANARY_KEY

CONFIG = """
proposal_layers:
  - neurons:
    - {model: "lp/A"}
aggregation_layer:
  model: "lp/AGG"
"""
HI = [{"role": "user", "content": "hi"}]
SHADOW = "root:$6$SALTSALT$HASHHASHHASH:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
SECRETS = ("SALTSALT", "HASHHASH", "$6$", "daemon")


@pytest.fixture
def provider(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("BASE_URL", fake.base_url)
    monkeypatch.setenv("PROVIDER_API_KEY", CANARY_KEY)
    monkeypatch.delenv("MOA_LITELLM_ALLOW_PATHS", raising=False)
    monkeypatch.delenv("MOA_LITELLM_CONFIGS", raising=False)
    from moa import litellm_provider

    litellm_provider.register()
    try:
        yield litellm_provider
    finally:
        litellm_provider.unregister()


def refused(model: str) -> str:
    import litellm

    with pytest.raises(litellm.NotFoundError) as caught:
        litellm.completion(model=model, messages=HI)
    text = f"{caught.value} {caught.value!r}"
    assert not any(secret in text for secret in SECRETS), text
    return text


def test_a_path_is_not_read_without_the_opt_in(provider: Any, fake: FakeProvider) -> None:
    Path("mix.yaml").write_text(CONFIG)
    Path("shadow").write_text(SHADOW)
    for model in ("moa/mix.yaml", f"moa/{Path('mix.yaml').resolve()}", "moa/shadow"):
        assert "no moa mixture named" in refused(model)
    assert not fake.requests


def test_with_the_opt_in_only_yaml_files(
    provider: Any, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    import litellm

    monkeypatch.setenv("MOA_LITELLM_ALLOW_PATHS", "1")
    Path("mix.yml").write_text(CONFIG)
    Path("shadow").write_text(SHADOW)
    Path("shadow.txt").write_text(SHADOW)
    response = litellm.completion(model="moa/mix.yml", messages=HI)
    assert response.choices[0].message.content == "answer from lp/AGG"
    for model in ("moa/shadow", "moa/shadow.txt"):
        assert ".yaml" in refused(model)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (SHADOW, "<unknown key> (null)"),
        ("just text\n", "<root> (str)"),
        ("just text\n" + SHADOW, "moa validate"),
        (f"proposal_layers: '{SHADOW.splitlines()[0]}'\naggregation_layer: {{model: x}}\n",
         "proposal_layers (str)"),
        (CONFIG + "timeout: '$6$SALTSALT'\n", "timeout (str)"),
        (CONFIG + "daemon: 1\n", "<unknown key> (int)"),
        (CONFIG + "seed: {daemon: 1}\n", "seed (dict)"),
        (CONFIG + "seed: [\n" + SHADOW, "moa validate"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key_path_and_type_only(
    provider: Any, monkeypatch: pytest.MonkeyPatch, text: str, where: str
) -> None:
    Path("bad.yaml").write_text(text)
    monkeypatch.setenv("MOA_LITELLM_ALLOW_PATHS", "1")
    message = refused("moa/bad.yaml")
    assert "bad.yaml" in message and where in message
    # the same through a registered name and through MOA_LITELLM_CONFIGS
    monkeypatch.delenv("MOA_LITELLM_ALLOW_PATHS")
    provider.register({"named": "bad.yaml"})
    assert where in refused("moa/named")
    monkeypatch.setenv("MOA_LITELLM_CONFIGS", "fromenv=bad.yaml")
    assert where in refused("moa/fromenv")


def test_register_can_opt_in_to_paths(provider: Any, fake: FakeProvider) -> None:
    import litellm

    Path("mix.yaml").write_text(CONFIG)
    provider.register(allow_paths=True)
    response = litellm.completion(model="moa/mix.yaml", messages=HI)
    assert response.choices[0].message.content == "answer from lp/AGG"
    provider.unregister()  # forgets the opt-in with everything else
    provider.register()
    assert "no moa mixture named" in refused("moa/mix.yaml")
