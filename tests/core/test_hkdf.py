"""tokenagent's HKDF-SHA256 (standard-library HMAC) gives what ``cryptography``'s HKDF gives (RFC 5869)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenagent.vault.crypto import hkdf, wipe


@settings(max_examples=300, deadline=None)
@given(ikm=st.binary(min_size=1, max_size=80), salt=st.one_of(st.none(), st.binary(min_size=1, max_size=80)),
       info=st.binary(max_size=80), length=st.integers(min_value=1, max_value=200))
def test_hkdf_matches_cryptography(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> None:
    expected = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)
    assert bytes(hkdf(bytearray(ikm), salt, info, length)) == expected


def test_rfc5869_case_1_and_wipe_in_place() -> None:
    ikm = bytearray(b"\x0b" * 22)
    okm = hkdf(ikm, bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")
    view = okm
    wipe(okm)
    assert view is okm and okm == bytearray(42)
