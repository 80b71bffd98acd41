"""The ssh-agent protocol (draft-miller-ssh-agent, OpenSSH's PROTOCOL.agent), sans-IO.

Theory of operation. A stream of messages, each a uint32 big-endian length, then a byte of
message type and its payload, in SSH wire types (uint32, string = uint32 length + bytes,
mpint). ``AgentConnection`` holds no socket: feed it bytes with ``receive_data``, take
``(type, payload)`` pairs from ``next_message`` (``NEED_DATA`` while a message is incomplete);
a length of 0 or over ``MAX_MESSAGE`` loses the framing and raises a fatal ``FrameError``
(OpenSSH's agent closes such a connection too). Parsing of payloads is strict: a string that
runs past the end, or bytes left over, is a ``WireError``, which the server answers with
SSH_AGENT_FAILURE (the connection stays usable, as OpenSSH's does).

Keys are given to this module as public blobs; signing is the caller's (the daemon holds the
vault secrets). ``describe_signed_data`` tells what a client asks to be signed, for the audit
log: an SSH user authentication (RFC 4252 section 7: session identifier, user, algorithm), an
SSHSIG blob (OpenSSH's PROTOCOL.sshsig: ``ssh-keygen -Y sign`` and git, with its namespace), or
something else (its length and hash).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from .protocol import FrameReader

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

MAX_MESSAGE: Final = 256 * 1024  # OpenSSH's AGENT_MAX_LEN

# message numbers (draft-miller-ssh-agent section 5.1)
SSH_AGENT_FAILURE: Final = 5
SSH_AGENT_SUCCESS: Final = 6
SSH_AGENTC_REQUEST_IDENTITIES: Final = 11
SSH_AGENT_IDENTITIES_ANSWER: Final = 12
SSH_AGENTC_SIGN_REQUEST: Final = 13
SSH_AGENT_SIGN_RESPONSE: Final = 14
SSH_AGENTC_ADD_IDENTITY: Final = 17
SSH_AGENTC_REMOVE_IDENTITY: Final = 18
SSH_AGENTC_REMOVE_ALL_IDENTITIES: Final = 19
SSH_AGENTC_ADD_SMARTCARD_KEY: Final = 20
SSH_AGENTC_REMOVE_SMARTCARD_KEY: Final = 21
SSH_AGENTC_LOCK: Final = 22
SSH_AGENTC_UNLOCK: Final = 23
SSH_AGENTC_ADD_ID_CONSTRAINED: Final = 25
SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED: Final = 26
SSH_AGENTC_EXTENSION: Final = 27
SSH_AGENT_EXTENSION_FAILURE: Final = 28

# which requests change the agent's keys or its lock: refused, as this agent serves derived keys only
REFUSED_REQUESTS: Final = frozenset({
    SSH_AGENTC_ADD_IDENTITY, SSH_AGENTC_REMOVE_IDENTITY, SSH_AGENTC_REMOVE_ALL_IDENTITIES,
    SSH_AGENTC_ADD_SMARTCARD_KEY, SSH_AGENTC_REMOVE_SMARTCARD_KEY, SSH_AGENTC_LOCK, SSH_AGENTC_UNLOCK,
    SSH_AGENTC_ADD_ID_CONSTRAINED, SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED,
})

# signature flags (section 5.3)
SSH_AGENT_RSA_SHA2_256: Final = 0x02
SSH_AGENT_RSA_SHA2_512: Final = 0x04
RSA_FLAGS: Final = SSH_AGENT_RSA_SHA2_256 | SSH_AGENT_RSA_SHA2_512

ED25519: Final = b"ssh-ed25519"
ECDSA_P256: Final = b"ecdsa-sha2-nistp256"
SSHSIG_MAGIC: Final = b"SSHSIG"
SSH_MSG_USERAUTH_REQUEST: Final = 50
HOSTBOUND: Final = "publickey-hostbound-v00@openssh.com"
EXT_QUERY: Final = "query"
EXT_SESSION_BIND: Final = "session-bind@openssh.com"

_U32 = struct.Struct(">I")


class WireError(ValueError):
    """A payload that does not parse: answered with SSH_AGENT_FAILURE."""


# --- wire types -------------------------------------------------------------------------------
def string(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def mpint(value: int) -> bytes:
    if value == 0:
        return string(b"")
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big")  # a leading 0 byte keeps it positive
    return string(raw)


class Reader:
    """Strict reading of SSH wire types from one payload."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise WireError("truncated uint32")
        (value,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise WireError("truncated byte")
        self.pos += 1
        return self.data[self.pos - 1]

    def string(self) -> bytes:
        length = self.u32()
        if length > len(self.data) - self.pos:
            raise WireError("string runs past the end of the message")
        value = self.data[self.pos : self.pos + length]
        self.pos += length
        return value

    def text(self) -> str:
        try:
            return self.string().decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("a name is not UTF-8") from None

    def rest(self) -> bytes:
        value = self.data[self.pos :]
        self.pos = len(self.data)
        return value

    def end(self) -> None:
        if self.pos != len(self.data):
            raise WireError(f"{len(self.data) - self.pos} bytes left over")


# --- framing ----------------------------------------------------------------------------------
class AgentConnection(FrameReader):
    """The server end of one ssh-agent connection: bytes in, (type, payload) out; answers out."""

    what = "ssh-agent message"
    min_frame = 1  # the type byte

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        super().__init__(max_message)

    def next_message(self) -> tuple[int, bytes] | object:
        body = self.next_frame()
        if not isinstance(body, bytes):
            return body
        return body[0], body[1:]


def message(kind: int, payload: bytes = b"") -> bytes:
    return _U32.pack(len(payload) + 1) + bytes((kind,)) + payload


def failure() -> bytes:
    return message(SSH_AGENT_FAILURE)


def success() -> bytes:
    return message(SSH_AGENT_SUCCESS)


def identities_answer(keys: Sequence[tuple[bytes, str]]) -> bytes:
    body = _U32.pack(len(keys)) + b"".join(string(blob) + string(comment.encode()) for blob, comment in keys)
    return message(SSH_AGENT_IDENTITIES_ANSWER, body)


def sign_response(signature: bytes) -> bytes:
    return message(SSH_AGENT_SIGN_RESPONSE, string(signature))


# --- requests ---------------------------------------------------------------------------------
def parse_sign_request(payload: bytes) -> tuple[bytes, bytes, int]:
    """(key blob, data to sign, flags) of SSH_AGENTC_SIGN_REQUEST."""
    r = Reader(payload)
    blob, data, flags = r.string(), r.string(), r.u32()
    r.end()
    return blob, data, flags


def parse_extension(payload: bytes) -> tuple[str, bytes]:
    r = Reader(payload)
    return r.text(), r.rest()


def parse_session_bind(contents: bytes) -> tuple[bytes, bytes, bytes, bool]:
    """(host key blob, session identifier, signature, is_forwarding) of session-bind@openssh.com."""
    r = Reader(contents)
    hostkey, session_id, signature = r.string(), r.string(), r.string()
    forwarding = r.byte()
    r.end()
    if forwarding > 1:
        raise WireError("is_forwarding is not a boolean")
    return hostkey, session_id, signature, bool(forwarding)


def query_answer(names: Sequence[str]) -> bytes:
    """The reply to the ``query`` extension: SSH_AGENT_SUCCESS, then the names it supports."""
    return message(SSH_AGENT_SUCCESS, string(EXT_QUERY.encode()) + b"".join(string(n.encode()) for n in names))


# --- keys and signatures ----------------------------------------------------------------------
def ed25519_blob(public: bytes) -> bytes:
    return string(ED25519) + string(public)


def ecdsa_p256_blob(point: bytes) -> bytes:
    return string(ECDSA_P256) + string(b"nistp256") + string(point)


def ed25519_signature(raw: bytes) -> bytes:
    return string(ED25519) + string(raw)


def ecdsa_p256_signature(r: int, s: int) -> bytes:
    return string(ECDSA_P256) + string(mpint(r) + mpint(s))


def key_type_of(blob: bytes) -> bytes:
    try:
        return Reader(blob).string()
    except WireError:
        return b""


def authorized_keys_line(blob: bytes, comment: str) -> str:
    line = f"{key_type_of(blob).decode('ascii', 'replace')} {base64.b64encode(blob).decode()}"
    return f"{line} {comment}" if comment else line


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint (``ssh-keygen -lf``, ``ssh-add -l``)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def public_blob(private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    # imported here: an idle agent has not loaded cryptography
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if isinstance(private, ed25519.Ed25519PrivateKey):
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return ed25519_blob(raw)
    point = private.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
    return ecdsa_p256_blob(point)


def sign(private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    if isinstance(private, ed25519.Ed25519PrivateKey):
        return ed25519_signature(private.sign(data))
    r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA256())))
    return ecdsa_p256_signature(r, s)


# --- what is signed (for the audit log) -------------------------------------------------------
def describe_signed_data(data: bytes) -> dict[str, str | int]:
    """What a sign request signs, as short printable fields; never raises."""
    if data.startswith(SSHSIG_MAGIC):
        try:
            r = Reader(data[len(SSHSIG_MAGIC):])
            namespace, _reserved, hash_alg, _digest = r.text(), r.string(), r.text(), r.string()
            r.end()
            return {"kind": "sshsig", "namespace": namespace[:128], "hash": hash_alg[:32]}
        except WireError:
            pass
    try:
        r = Reader(data)
        session_id = r.string()
        if r.byte() == SSH_MSG_USERAUTH_REQUEST:
            user, service, method = r.text(), r.text(), r.text()
            if method in ("publickey", HOSTBOUND) and r.byte() == 1:
                alg = r.text()
                r.string()  # the public key
                what: dict[str, str | int] = {"kind": "ssh-userauth", "user": user[:128], "service": service[:64],
                                              "alg": alg[:64], "session": hashlib.sha256(session_id).hexdigest()[:16]}
                if method == HOSTBOUND:  # OpenSSH's PROTOCOL: the server's host key is signed too
                    what["host"] = fingerprint(r.string())
                r.end()
                return what
    except WireError:
        pass
    return {"kind": "other", "length": len(data), "sha256": hashlib.sha256(data).hexdigest()[:16]}
