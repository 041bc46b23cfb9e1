"""Compatibility alias: `from moa_llm import create_moa_from_config` keeps working.

Everything here is `moa`'s public API; new code should import `moa`.
"""

from moa import *  # noqa: F403
from moa import __all__, __version__  # noqa: F401
