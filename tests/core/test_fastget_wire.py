"""The pieces ``tokenagent get`` writes itself to keep modules off its path: its base64 writer
(instead of binascii) and its reading of SO_PEERCRED (instead of struct) give what the library
calls give."""

from __future__ import annotations

import binascii
import os
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from tokenagent import _locations, fastget


@given(st.binary(max_size=200))
def test_the_base64_writer_is_binascii(data: bytes) -> None:
    assert bytes(fastget._b64(bytearray(data))) == binascii.b2a_base64(data, newline=False)


def test_the_base64_writer_at_the_secret_cap() -> None:
    data = os.urandom(4096)
    assert bytes(fastget._b64(bytearray(data))) == binascii.b2a_base64(data, newline=False)


def test_peer_credentials_read_as_struct_ucred() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        raw = left.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("=iII"))
        assert _locations.peer_credentials(left) == struct.unpack("=iII", raw) == (os.getpid(), os.getuid(),
                                                                                   os.getgid())
