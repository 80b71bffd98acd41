"""Strict readers for factor parameters (a descriptor's ``params`` object)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Set
from typing import Any

from ..errors import TokenAgentError, VaultFormatError


def expect_keys(params: Mapping[str, Any], allowed: Set[str], what: str, optional: Set[str] = frozenset()) -> None:
    keys = set(params)
    if not (allowed - optional) <= keys <= allowed:
        raise VaultFormatError(
            f"{what}: parameters wrong (unknown: {sorted(keys - allowed)}, missing: {sorted(allowed - optional - keys)})"
        )


def expect_int(params: Mapping[str, Any], key: str, low: int, high: int, what: str) -> int:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise VaultFormatError(f"{what}: {key} must be an integer from {low} to {high}")
    return value


def expect_str(params: Mapping[str, Any], key: str, what: str, max_len: int = 4096) -> str:
    value = params[key]
    if not isinstance(value, str) or len(value) > max_len:
        raise VaultFormatError(f"{what}: {key} must be a string of at most {max_len} characters")
    return value


def strict_b64(value: object, what: str, length: int | None = None,
               error: type[TokenAgentError] = VaultFormatError) -> bytes:
    """Padded standard base64 and nothing else (no whitespace, no other alphabet): the one reader of
    the base64 fields of vault files, factor parameters and the files we import (``error`` says whose)."""
    if not isinstance(value, str):
        raise error(f"{what} is missing or not a base64 string")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise error(f"{what} is not base64") from None
    if length is not None and len(data) != length:
        raise error(f"{what} must be {length} bytes, not {len(data)}")
    return data


def no_duplicates(error: type[TokenAgentError] = VaultFormatError) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """A ``json.loads`` ``object_pairs_hook`` that refuses an object naming a key twice (raises ``error``)."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise error(f"duplicate key {key!r}")
            out[key] = value
        return out

    return hook


def expect_b64(params: Mapping[str, Any], key: str, length: int | None, what: str) -> bytes:
    return strict_b64(params[key], f"{what}: {key}", length)


def expect_hex(params: Mapping[str, Any], key: str, length: int, what: str) -> bytes:
    value = params[key]
    try:
        data = bytes.fromhex(value) if isinstance(value, str) and value == value.lower() else None
    except ValueError:
        data = None
    if data is None or len(data) != length:
        raise VaultFormatError(f"{what}: {key} must be {2 * length} lowercase hex digits")
    return data
