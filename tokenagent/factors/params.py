"""Strict readers for factor parameters (a descriptor's ``params`` object)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Set
from typing import Any

from ..errors import VaultFormatError


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


def expect_b64(params: Mapping[str, Any], key: str, length: int | None, what: str) -> bytes:
    value = params[key]
    if not isinstance(value, str):
        raise VaultFormatError(f"{what}: {key} must be a base64 string")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise VaultFormatError(f"{what}: {key} is not valid base64") from None
    if length is not None and len(data) != length:
        raise VaultFormatError(f"{what}: {key} must be {length} bytes")
    return data


def expect_hex(params: Mapping[str, Any], key: str, length: int, what: str) -> bytes:
    value = params[key]
    try:
        data = bytes.fromhex(value) if isinstance(value, str) and value == value.lower() else None
    except ValueError:
        data = None
    if data is None or len(data) != length:
        raise VaultFormatError(f"{what}: {key} must be {2 * length} lowercase hex digits")
    return data
