"""Factor types. Importing this package registers the software factors (password, key file, recovery)."""

from __future__ import annotations

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
