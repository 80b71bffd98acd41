"""The ``age-unwrap`` op: the agent opens age X25519 stanzas with a key derived from a vault (docs/age.md).

Theory of operation. The age plugin (tokenagent/ageplugin.py) runs in age's process tree and
holds no secret: it sends the X25519 stanzas of a file (ephemeral share, wrapped file key) with
the vault and label its identity names; the agent derives the X25519 key of that label from the
unlocked vault, tries each stanza as age does (age-encryption.org/v1, "X25519 recipient
stanza"), and answers the 16-byte file key of the first that opens, or none ("not mine": age
tries its next identity). The X25519 key never leaves the agent; the file key does, as it must
for age to decrypt. Each request is one audit line. The same checks as ``get`` apply: a locked
vault is ``locked`` (with ``wait`` the server holds the request until it unlocks), and the
vault's ``allow_uids``/``allow_exe`` rules (the peer is the plugin, run by age).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import TYPE_CHECKING, Any

from ..errors import TokenAgentError, UsageError
from ..vault.crypto import hkdf

if TYPE_CHECKING:
    from .state import AgentState, Peer

X25519_INFO = b"age-encryption.org/v1/X25519"
MAX_STANZAS = 64


def _stanzas(value: Any) -> list[tuple[bytes, bytes]]:
    if not isinstance(value, list) or len(value) > MAX_STANZAS:
        raise UsageError(f"stanzas is a list of at most {MAX_STANZAS} [share, body] pairs")
    out = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise UsageError("each stanza is [share, body] in base64")
        try:
            share, body = (base64.b64decode(x + "=" * (-len(x) % 4), validate=True) for x in item)
        except (binascii.Error, ValueError):
            raise UsageError("a stanza is not base64") from None
        if len(share) != 32 or len(body) != 32:
            raise UsageError("an X25519 stanza has a 32-byte share and a 32-byte body")
        out.append((share, body))
    return out


def unwrap_x25519(secret: bytes | bytearray, label: str, stanzas: list[tuple[bytes, bytes]]) -> tuple[int, bytes] | None:
    """(index, file key) of the first stanza the key ``label`` opens; None if none does."""
    from cryptography.exceptions import InvalidTag  # here: an idle agent has not loaded cryptography
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from ..vault.identities import age_x25519_key

    private = age_x25519_key(secret, label)
    ours = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    for index, (share, body) in enumerate(stanzas):
        try:
            shared = private.exchange(X25519PublicKey.from_public_bytes(share))
        except ValueError:  # a low-order share: the all-zero shared secret age forbids
            continue
        wrap_key = hkdf(shared, share + ours, X25519_INFO, 32)
        try:
            file_key = ChaCha20Poly1305(bytes(wrap_key)).decrypt(bytes(12), body, None)
        except InvalidTag:
            continue
        finally:
            wrap_key[:] = bytes(32)
        if len(file_key) == 16:
            return index, file_key
    return None


def age_unwrap(state: AgentState, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
    from .state import _vault_arg

    vault = _vault_arg(args)
    from ..vault.identities import check_label

    label = check_label(args.get("label"))  # type: ignore[arg-type]
    stanzas = _stanzas(args.get("stanzas"))
    try:
        session = state.sessions.get(vault)
        if session is not None and state._expire_session(session, state.clock()):
            session = None
        if session is None:  # not found (with the names close to it), or locked: the same words as get
            raise state._why_not_unlocked(vault)
        state._check_peer(vault, peer)
        found = unwrap_x25519(session.secret, label, stanzas)
    except TokenAgentError as err:
        _audit(state, vault, label, peer, err.code, None)
        raise
    _audit(state, vault, label, peer, None, None if found is None else found[0])
    if found is None:
        return {"vault": vault, "index": None, "file_key": None}
    if session.idle_ttl > 0:
        session.idle_deadline = state.clock() + session.idle_ttl
        if state.mirror is not None:
            state.mirror.extend(vault, session.idle_deadline)
    session.releases += 1
    return {"vault": vault, "index": found[0], "file_key": base64.b64encode(found[1]).decode()}


def _audit(state: AgentState, vault: str, label: str, peer: Peer, error: str | None, index: int | None) -> None:
    if not state.config.audit or state.audit_path is None:
        return
    line = json.dumps({"op": "age-unwrap", "time": round(time.time(), 3), "vault": vault, "key": label,
                       "ok": error is None, "error": error, "stanza": index, "pid": peer.pid, "uid": peer.uid,
                       "exe": peer.exe, "parent_exe": peer.parent_exe}, sort_keys=True) + "\n"
    state.write_audit(line.encode())  # the agent's one audit writer (whole lines, rotation); fails closed
