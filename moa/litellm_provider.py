"""The documented import path of moa's litellm custom provider (README, "From litellm").

The code lives in `moa.adapters.litellm_provider`; see there. Importing this module does not
import litellm: `handler` and `MoAProvider` are made on first access.
"""

from typing import TYPE_CHECKING, Any

from moa.adapters import litellm_provider as _provider
from moa.adapters.litellm_provider import PROVIDER, register, resolve, unregister

__all__ = ["PROVIDER", "MoAProvider", "handler", "register", "resolve", "unregister"]

if TYPE_CHECKING:  # made on first access, by __getattr__ below
    MoAProvider: type[Any]
    handler: Any


def __getattr__(name: str) -> Any:
    if name in {"MoAProvider", "handler"}:
        return getattr(_provider, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
