"""age's encodings for the age face (docs/age.md): Bech32 identities and recipients, plugin stanzas.

Theory of operation. age (age-encryption.org/v1) names keys in Bech32 (BIP 173, without its
90-character limit): a native recipient is ``age1`` + the X25519 public key; a plugin identity
is ``AGE-PLUGIN-<NAME>-1...`` in upper case, whose data only the plugin reads. Ours,
``AGE-PLUGIN-TOKENAGENT-1...``, holds a version byte, the vault name and the label, never a
secret: the X25519 key is derived from the vault in the agent.

The plugin protocol (C2SP age-plugin) is a sequence of stanzas on the plugin's stdin/stdout:
``-> TYPE ARG...`` then the body in standard base64 without padding, in lines of 64
characters, ended by a line shorter than 64 (possibly empty). ``StanzaReader`` parses them
strictly from a binary stream; ``write_stanza`` encodes one. Standard library only.
"""

from __future__ import annotations

import base64
import binascii
from typing import BinaryIO, Final

CHARSET: Final = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
PLUGIN_NAME: Final = "tokenagent"
IDENTITY_HRP: Final = "age-plugin-tokenagent-"
RECIPIENT_HRP: Final = "age"
IDENTITY_VERSION: Final = 1
MAX_LINE: Final = 64 * 1024
MAX_BODY: Final = 1024 * 1024


class EncodingError(ValueError):
    """Not a valid Bech32 string, identity or stanza."""


# --- Bech32 (BIP 173) ---------------------------------------------------------------------------
def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i, g in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
            chk ^= g if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = bits = 0
    out = []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = acc << from_bits | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append(acc >> bits & maxv)
    if pad and bits:
        out.append(acc << (to_bits - bits) & maxv)
    elif not pad and (bits >= from_bits or acc << (to_bits - bits) & maxv):
        raise EncodingError("bad Bech32 padding")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    values = _convert(data, 8, 5, True)
    check = _polymod(_hrp_expand(hrp) + values + [0] * 6) ^ 1
    values += [(check >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[v] for v in values)


def bech32_decode(text: str) -> tuple[str, bytes]:
    if text.lower() != text and text.upper() != text:
        raise EncodingError("mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text) or any(not 33 <= ord(c) <= 126 for c in text):
        raise EncodingError("not a Bech32 string")
    hrp = text[:pos]
    try:
        values = [CHARSET.index(c) for c in text[pos + 1 :]]
    except ValueError:
        raise EncodingError("a character outside Bech32's alphabet") from None
    if _polymod(_hrp_expand(hrp) + values) != 1:
        raise EncodingError("bad Bech32 checksum")
    return hrp, bytes(_convert(values[:-6], 5, 8, False))


# --- keys ---------------------------------------------------------------------------------------
def recipient(public: bytes) -> str:
    """The native ``age1...`` X25519 recipient of a public key."""
    if len(public) != 32:
        raise EncodingError("an X25519 public key is 32 bytes")
    return bech32_encode(RECIPIENT_HRP, public)


def identity(vault: str, label: str) -> str:
    """``AGE-PLUGIN-TOKENAGENT-1...`` naming the age key ``label`` of ``vault``."""
    name, text = vault.encode("utf-8"), label.encode("utf-8")
    if not 0 < len(name) < 256 or not 0 < len(text) <= 1024:
        raise EncodingError("a vault name and a label are needed")
    return bech32_encode(IDENTITY_HRP, bytes((IDENTITY_VERSION, len(name))) + name + text).upper()


def parse_identity(text: str) -> tuple[str, str]:
    """(vault, label) of one of our identities; EncodingError for anything else."""
    hrp, data = bech32_decode(text.strip())
    if hrp != IDENTITY_HRP:
        raise EncodingError("not an AGE-PLUGIN-TOKENAGENT-1 identity")
    if len(data) < 3 or data[0] != IDENTITY_VERSION or len(data) < 2 + data[1] + 1:
        raise EncodingError("an identity of another version of tokenagent, or damaged")
    try:
        return data[2 : 2 + data[1]].decode("utf-8"), data[2 + data[1] :].decode("utf-8")
    except UnicodeDecodeError:
        raise EncodingError("a damaged identity") from None


# --- stanzas ------------------------------------------------------------------------------------
def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    """age's base64: standard alphabet, no padding, canonical."""
    if "=" in text or "\n" in text or len(text) % 4 == 1:
        raise EncodingError("not age's unpadded base64")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise EncodingError("not base64") from None
    if b64(data) != text:
        raise EncodingError("non-canonical base64")
    return data


def write_stanza(kind: str, args: list[str] | tuple[str, ...] = (), body: bytes = b"") -> bytes:
    encoded = b64(body)
    lines = [encoded[i : i + 64] for i in range(0, len(encoded), 64)]
    if not lines or len(lines[-1]) == 64:
        lines.append("")
    return ("-> " + " ".join([kind, *args]) + "\n" + "\n".join(lines) + "\n").encode()


class StanzaReader:
    """Stanzas from a binary stream (the plugin's stdin)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def _line(self) -> str:
        line = self.stream.readline(MAX_LINE + 1)
        if not line:
            raise EOFError("age closed the connection")
        if not line.endswith(b"\n") or len(line) > MAX_LINE:
            raise EncodingError("a line too long, or cut")
        try:
            return line[:-1].decode("ascii")
        except UnicodeDecodeError:
            raise EncodingError("a line that is not ASCII") from None

    def read(self) -> tuple[str, list[str], bytes]:
        """(type, arguments, body)."""
        head = self._line()
        if not head.startswith("-> "):
            raise EncodingError("a stanza must start with '-> '")
        parts = head[3:].split(" ")
        if not parts[0] or any(not p for p in parts):
            raise EncodingError("an empty stanza argument")
        body = bytearray()
        while True:
            line = self._line()
            if len(line) > 64:
                raise EncodingError("a body line longer than 64 characters")
            body += unb64(line)
            if len(body) > MAX_BODY:
                raise EncodingError("a stanza body over 1 MiB")
            if len(line) < 64:
                return parts[0], parts[1:], bytes(body)
