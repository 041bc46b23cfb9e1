"""Settings read from the environment and from `.env` / `.env.local` in the working directory.

Precedence, highest first: environment variables, `.env.local`, `.env`, defaults. Nothing is
read at import time: settings are read when a mixture is built (or when you call `Settings()`).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_BASE_URL", "ENV_FILES", "Settings"]

DEFAULT_BASE_URL = "https://api.together.xyz/v1"
ENV_FILES: tuple[str, ...] = (".env", ".env.local")  # later files win


class Settings(BaseSettings):
    """Credentials and defaults for neurons that call an OpenAI-compatible endpoint.

    `provider_api_key` (`PROVIDER_API_KEY`) is a `SecretStr`: it never shows in `repr()` or
    dumps. `base_url` (`BASE_URL`) is where bare model names (`meta-llama/...`) are sent.
    """

    model_config = SettingsConfigDict(
        env_file=ENV_FILES,
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    provider_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("PROVIDER_API_KEY", "provider_api_key")
    )
    base_url: str = Field(
        default=DEFAULT_BASE_URL, validation_alias=AliasChoices("BASE_URL", "base_url")
    )
    request_timeout: float = Field(
        default=120.0,
        gt=0,
        validation_alias=AliasChoices("MOA_REQUEST_TIMEOUT", "request_timeout"),
        description="Default seconds one LLM call may take (connect + read).",
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        validation_alias=AliasChoices("MOA_MAX_RETRIES", "max_retries"),
        description="Default number of retries of a retryable failure.",
    )

    def model_post_init(self, context: object, /) -> None:
        from moa._redact import remember, remember_environment

        # masked in upstream text from now on, whichever call echoes them
        remember_environment()
        if self.provider_api_key is not None:
            remember(self.provider_api_key.get_secret_value())

    def secret(self, name: str) -> str | None:
        """Value of the variable `name` from the environment, `.env.local` or `.env`, else None.

        Used for per-neuron `api_key_env`. An empty value counts as unset.
        """
        if name == "PROVIDER_API_KEY" and self.provider_api_key is not None:
            value: str | None = self.provider_api_key.get_secret_value()
            return value or None
        value = os.environ.get(name)
        if value:
            return value
        for env_file in reversed(ENV_FILES):
            path = Path(env_file)
            if path.is_file():
                from dotenv import dotenv_values

                found = dotenv_values(path).get(name)
                if found:
                    return found
        return None
