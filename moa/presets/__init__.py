"""Which config to run when none is given (the zero-config path of `moa run`).

`resolve_default()` picks, in order:

1. `PROVIDER_API_KEY` is set (environment, `.env.local` or `.env`): the seed's example
   config, `seed.yaml` (a copy of `examples/moa_config.yaml`) against `BASE_URL`.
2. An installed plugin registered a `local` preset through the `register_presets` hook
   (moa-llamacpp does: a mixture of SmolLM2-135M via llama.cpp that needs no key and no
   network).
3. Neither: `ConfigError` explaining both options.

Nothing here runs on `import moa`; plugins are looked up only when `resolve_default()` is
called.
"""

from __future__ import annotations

from pathlib import Path

from moa.errors import ConfigError
from moa.settings import Settings

__all__ = ["LOCAL_PRESET_NAME", "SEED_CONFIG", "local_preset", "resolve_default"]

SEED_CONFIG = Path(__file__).with_name("seed.yaml")
"""The seed's example mixture (identical to `examples/moa_config.yaml`)."""

LOCAL_PRESET_NAME = "local"
"""The preset run with no config and no key, as a plugin registers it (`register_presets`)."""

_LOCAL_INSTALL = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON '
    '-DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF" pip install -r requirements-local.txt'
)


def local_preset() -> Path | None:
    """The `local` preset an installed plugin registered (`register_presets` hook), or None.

    `MOA_LOAD_PLUGINS` applies.
    """
    from moa.plugins import presets

    preset = presets().get(LOCAL_PRESET_NAME)
    return preset if preset is not None and preset.is_file() else None


def resolve_default(settings: Settings | None = None) -> tuple[Path, str]:
    """The config to run when the user gave none, and a one-line message saying which.

    Returns `(path_of_a_yaml_config, message)`; the caller prints the message (to stderr)
    and builds the mixture with `create_moa_from_config(path)`. Raises `ConfigError` when
    there is neither an API key nor a local model.
    """
    settings = settings if settings is not None else Settings()
    if settings.secret("PROVIDER_API_KEY"):
        return SEED_CONFIG, (
            "no config given: PROVIDER_API_KEY is set, using the example config "
            f"(annotator, 2 proposal layers, aggregator) at {settings.base_url}"
        )
    preset = local_preset()
    if preset is not None:
        from moa.plugins import plugin_of_preset

        return preset, (
            f"no config and no PROVIDER_API_KEY: using the local preset ({preset.name} from "
            f"{plugin_of_preset(LOCAL_PRESET_NAME) or 'an installed plugin'})"
        )
    raise ConfigError(
        "no config given, and nothing to run without one. Either:\n"
        "  - set PROVIDER_API_KEY (in the environment or in .env.local) to run the example "
        "config against BASE_URL (default: Together's OpenAI-compatible API), or\n"
        "  - install the offline local model plugin (no key, no network): "
        f"{_LOCAL_INSTALL}\n"
        "or pass a config file of your own."
    )
