"""Search spaces, registered by name. Adding a space means adding one module to this folder."""

import importlib
import pkgutil

from spaces.distributions import Choice, Distribution, IntUniform, LogUniform, Uniform
from spaces.registry import (
    CANONICAL_HYPERPARAMETERS,
    SearchSpace,
    SpaceError,
    get_space,
    list_spaces,
    register_space,
)

__all__ = [
    "CANONICAL_HYPERPARAMETERS",
    "Choice",
    "Distribution",
    "IntUniform",
    "LogUniform",
    "SearchSpace",
    "SpaceError",
    "Uniform",
    "get_space",
    "list_spaces",
    "register_space",
]

# NOTE: every public module of this package other than the two above is a space that registers
# itself on import; importing them here makes `get_space` see all of them.
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in ("distributions", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")
