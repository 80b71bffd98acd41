"""authenticatorLargeBlobs of the virtual FIDO2 authenticator (CTAP 2.1 §6.10).

Theory of operation. The authenticator keeps one opaque byte string, the serialized large-blob
array: a CBOR array followed by LEFT(SHA-256(array), 16). It never looks inside (entries are
sealed by clients under each credential's largeBlobKey). Reads take any slice; a write comes
in fragments of at most maxMsgSize - 64 bytes at consecutive offsets, the first one stating
the total length, and replaces the stored string only when the last fragment arrives and the
checksum holds. While a PIN is set, each fragment carries pinUvAuthParam =
authenticate(token, 32 x FF || 0C 00 || uint32LE(offset) || SHA-256(fragment)) by a token with
the lbw permission.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import TYPE_CHECKING, Any

from .ctap_status import CtapFailure, Err

if TYPE_CHECKING:
    from .ctap2 import Fido2Applet

CMD_LARGE_BLOBS = 0x0C
MAX_SERIALIZED = 4096  # maxSerializedLargeBlobArray in getInfo
PERMISSION_LBW = 0x10
ERR_STORAGE_FULL = 0x18  # CTAP2_ERR_LARGE_BLOB_STORAGE_FULL
ERR_INVALID_SEQ = 0x04
EMPTY = bytes.fromhex("80") + hashlib.sha256(bytes.fromhex("80")).digest()[:16]


def initial_state() -> str:
    return base64.b64encode(EMPTY).decode()


class LargeBlobs:
    def __init__(self, applet: Fido2Applet, max_fragment: int) -> None:
        self.applet = applet
        self.max_fragment = max_fragment
        self._pending: tuple[int, bytearray] | None = None  # expected length, what came so far

    @property
    def stored(self) -> bytes:
        return base64.b64decode(self.applet.large_blob_array)

    def forget_write(self) -> None:
        self._pending = None

    def handle(self, params: dict[Any, Any]) -> dict[int, Any] | None:
        get, data, offset, length = params.get(1), params.get(2), params.get(3), params.get(4)
        if not isinstance(offset, int) or offset < 0 or (get is None) == (data is None):
            raise CtapFailure(Err.INVALID_PARAMETER)
        if get is not None:
            if not isinstance(get, int) or get < 0 or length is not None:
                raise CtapFailure(Err.INVALID_PARAMETER)
            if get > self.max_fragment:
                raise CtapFailure(Err.INVALID_LENGTH)
            stored = self.stored
            if offset > len(stored):
                raise CtapFailure(Err.INVALID_PARAMETER)
            return {1: stored[offset:offset + get]}
        if not isinstance(data, bytes):
            raise CtapFailure(Err.CBOR_UNEXPECTED_TYPE)
        self._write(params, data, offset, length)
        return None

    def _write(self, params: dict[Any, Any], data: bytes, offset: int, length: Any) -> None:
        if len(data) > self.max_fragment:
            raise CtapFailure(Err.INVALID_LENGTH)
        if offset == 0:
            if not isinstance(length, int):
                raise CtapFailure(Err.INVALID_PARAMETER)
            if length > MAX_SERIALIZED:
                raise CtapFailure(ERR_STORAGE_FULL)
            if length < 17:
                raise CtapFailure(Err.INVALID_PARAMETER)
            self._pending = (length, bytearray())
        elif length is not None:
            raise CtapFailure(Err.INVALID_PARAMETER)
        if self._pending is None or offset != len(self._pending[1]):
            raise CtapFailure(ERR_INVALID_SEQ)
        if self.applet.pin_hash is not None:
            if params.get(5) is None:
                raise CtapFailure(Err.PUAT_REQUIRED)
            message = b"\xff" * 32 + b"\x0c\x00" + struct.pack("<I", offset) + hashlib.sha256(data).digest()
            self.applet.verify_auth_param(params, 5, 6, message)
            if not self.applet.token_permissions & PERMISSION_LBW:
                raise CtapFailure(Err.PIN_AUTH_INVALID)
        expected, received = self._pending
        if offset + len(data) > expected:
            raise CtapFailure(Err.INVALID_PARAMETER)
        received += data
        if len(received) < expected:
            return
        self._pending = None
        if hashlib.sha256(received[:-16]).digest()[:16] != received[-16:]:
            raise CtapFailure(Err.INTEGRITY_FAILURE)
        self.applet.large_blob_array = base64.b64encode(bytes(received)).decode()
        self.applet.changed()
