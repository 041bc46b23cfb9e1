"""The public surface: a complete sorted `__all__`, the `moa_llm` alias, and a light import."""

from __future__ import annotations

import subprocess
import sys

import moa
import moa_llm


def test_all_is_sorted_and_complete() -> None:
    public = sorted(
        name
        for name in vars(moa)
        if name.isidentifier()
        and not name.startswith("_")
        and name
        not in {
            "adapters",
            "annotator",
            "batch",
            "cli",
            "config",
            "errors",
            "eval",
            "events",
            "extract",
            "hookspecs",
            "layers",
            "litellm_provider",
            "mixture",
            "neurons",
            "plugins",
            "presets",
            "ratelimit",
            "result",
            "retry",
            "server",
            "settings",
            "testing",
        }
    )
    assert moa.__all__ == sorted(moa.__all__, key=str)
    assert sorted(set(moa.__all__) - {"__version__"}) == public


def test_exported_classes_claim_the_public_module() -> None:
    for name in moa.__all__:
        obj = getattr(moa, name)
        if isinstance(obj, type):
            assert obj.__module__ == "moa", name


def test_moa_llm_alias_re_exports_moa() -> None:
    assert moa_llm.__all__ == moa.__all__
    for name in moa.__all__:
        assert getattr(moa_llm, name) is getattr(moa, name)


def test_import_is_light() -> None:
    code = (
        "import sys, moa, moa_llm, moa.testing\n"
        "heavy = [m for m in ('litellm', 'openai', 'aiohttp', 'httpx', 'tiktoken', 'click', 'rich',"
        " 'starlette', 'uvicorn') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert out.stderr == ""


def test_errors_pickle_round_trip() -> None:
    import pickle

    from moa import AllNeuronsFailed, ConfigError, ProviderError, RateLimitError

    rate = RateLimitError("slow", neuron="p", model="m", status_code=429, retry_after=2.0)
    again = pickle.loads(pickle.dumps(rate))
    assert (again.neuron, again.status_code, again.retry_after, str(again)) == (
        "p",
        429,
        2.0,
        str(rate),
    )
    group = pickle.loads(pickle.dumps(AllNeuronsFailed("all", [ProviderError("x")], layer="L")))
    assert group.layer == "L" and len(group.exceptions) == 1
    config = pickle.loads(pickle.dumps(ConfigError("bad", source="f.yaml", errors=[("a", "b")])))
    assert config.errors == [("a", "b")] and config.source == "f.yaml"
