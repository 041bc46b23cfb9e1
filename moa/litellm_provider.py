"""The documented import path of moa's litellm custom provider (README, "From litellm").

The code lives in `moa.adapters.litellm_provider`; see there.
"""

from moa.adapters.litellm_provider import (
    PROVIDER,
    MoAProvider,
    handler,
    register,
    resolve,
    unregister,
)

__all__ = ["PROVIDER", "MoAProvider", "handler", "register", "resolve", "unregister"]
