"""Loading the factor types this installation has.

The software factors always exist. Token factors come from ``tokenagent.drivers`` when that
package is installed with its dependencies; without it, vaults still load (their token
factors appear as "not supported here") and the software slots still open.
"""

from __future__ import annotations

import importlib

from .factors.base import REGISTRY, Factor

_loaded = False


def load_factor_types() -> dict[str, type[Factor]]:
    """Import every factor type once; return the registry (type name -> class)."""
    global _loaded
    if not _loaded:
        importlib.import_module("tokenagent.factors")
        try:
            importlib.import_module("tokenagent.drivers")
        except ModuleNotFoundError as err:
            if err.name not in ("tokenagent.drivers",):
                raise
        _loaded = True
    return dict(REGISTRY)
