"""Factor types. Importing this package registers the software factors (password, key file, recovery).

Token factors (fido2, piv, otp, pkcs11) live in ``tokenagent.drivers`` and are registered by
``tokenagent.plugins.load_factor_types()``.
"""

from __future__ import annotations

from . import keyfile, password, recovery  # noqa: F401  (registration)
from .base import (
    REGISTRY,
    Factor,
    FactorContext,
    Interaction,
    SecretRequest,
    factor_from_descriptor,
    register,
)

__all__ = ["REGISTRY", "Factor", "FactorContext", "Interaction", "SecretRequest", "factor_from_descriptor", "register"]
