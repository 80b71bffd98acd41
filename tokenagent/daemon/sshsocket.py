"""The agent's ssh-agent socket (``SOCKET.ssh``): SSH keys derived from unlocked vaults (docs/ssh.md).

Theory of operation. A third socket next to ``agent.sock`` and ``agent.sock.get``, protected
as they are (private directory, mode 0600 from the bind, ``SO_PEERCRED`` uid check before a
byte is read). ``SshService`` answers the ssh-agent requests against ``AgentState``: the keys
of ``[ssh] keys`` in config.toml are listed only while their vault is unlocked (and only to
peers the vault's ``allow_uids``/``allow_exe`` rules admit); a signature is made from the
vault's secret at the moment of the request (the private key is derived, used and dropped),
counts as a use of the vault (its idle deadline is pushed back), and is one line of the audit
log, written before the signature leaves. Everything that would change the agent's keys or
lock it with a passphrase is refused: the keys are the vaults', ``tokenagent lock`` locks.

``session-bind@openssh.com`` (sent by ssh after key exchange) is verified and remembered per
connection, so the audit line of a user authentication names the server's host key. A key
with ``confirm = true`` asks the configured pinentry program (CONFIRM) before each signature;
one with ``touch = true`` has the token that unlocked the vault open it again (its touch, and
its PIN where the slot needs one), in a worker thread; the connection's next requests wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import _locations, sshagent
from ..errors import AgentError, TokenAgentError, UnsafePath
from ..protocol import CLOSED, NEED_DATA, FrameError
from ..vault import wipe
from .config import SshKey
from .pinentry import Pinentry
from .plug import Opened, in_loop, open_with_token
from .sockets import (
    MAX_BACKLOG,
    Acceptor,
    StallingFramesClose,
    bind_private,
    clear_old_socket,
)
from .state import AgentState, Peer, Session

log = logging.getLogger(__name__)
MAX_CLIENTS = 128
MAX_SUN_PATH = 107
EXTENSIONS = (sshagent.EXT_QUERY, sshagent.EXT_SESSION_BIND)


@dataclass
class ConnectionState:
    """What one ssh-agent connection has told us: the host keys it is bound to (session-bind)."""

    hosts: dict[bytes, str] = field(default_factory=dict)  # session id -> host key fingerprint


class SshService:
    """The ssh-agent requests, answered against the agent's state (no sockets: tested directly)."""

    def __init__(self, state: AgentState) -> None:
        self.state = state
        self._keys: tuple[SshKey, ...] | None = None  # set by tests; else the configuration's
        self._blobs: dict[tuple[str, str, str, str], bytes] = {}  # (vault, fingerprint, label, type) -> blob
        # the agent's desktop "touch your key" notice (AgentServer.touch_notice), called in the loop
        self.touch_notice: Callable[[str, str], None] | None = None

    # --- keys ---------------------------------------------------------------------------------
    @property
    def keys(self) -> tuple[SshKey, ...]:
        """The configured keys, as of the last configuration (re)load (SIGHUP)."""
        return self._keys if self._keys is not None else self.state.config.ssh_keys

    @keys.setter
    def keys(self, keys: tuple[SshKey, ...]) -> None:
        self._keys = keys

    def _session(self, vault: str) -> Session | None:
        session = self.state.sessions.get(vault)
        if session is not None and self.state._expire_session(session, self.state.clock()):
            return None
        return session

    def _allowed(self, vault: str, peer: Peer) -> bool:
        try:
            self.state._check_peer(vault, peer)
        except TokenAgentError:
            return False
        return True

    def blob(self, session: Session, key: SshKey) -> bytes:
        cache = (session.vault, session.fingerprint, key.label, key.type)
        blob = self._blobs.get(cache)
        if blob is None:
            from ..vault.identities import ssh_private_key  # cryptography: loaded once a vault is unlocked

            blob = sshagent.public_blob(ssh_private_key(session.secret, key.label, key.type))
            self._blobs[cache] = blob
        return blob

    def listed(self, peer: Peer) -> list[tuple[bytes, SshKey, Session]]:
        out = []
        for key in self.keys:
            session = self._session(key.vault)
            if session is not None and self._allowed(key.vault, peer):
                out.append((self.blob(session, key), key, session))
        return out

    # --- requests -------------------------------------------------------------------------------
    def handle(self, kind: int, payload: bytes, peer: Peer, conn: ConnectionState) -> bytes | Awaitable[bytes]:
        """The answer to one request (a coroutine when a person must confirm); never raises."""
        try:
            if kind == sshagent.SSH_AGENTC_REQUEST_IDENTITIES:
                if payload:
                    return sshagent.failure()
                return sshagent.identities_answer([(blob, key.comment or f"{key.vault}/{key.label}")
                                                   for blob, key, _ in self.listed(peer)])
            if kind == sshagent.SSH_AGENTC_SIGN_REQUEST:
                return self._sign_request(payload, peer, conn)
            if kind == sshagent.SSH_AGENTC_EXTENSION:
                return self._extension(payload, conn)
            return sshagent.failure()  # REFUSED_REQUESTS and unknown types alike
        except sshagent.WireError:
            return sshagent.failure()
        except Exception as err:  # noqa: BLE001 - a bug: answer and keep serving; the message could hold data
            log.error("internal error in an ssh-agent request %d: %s", kind, type(err).__name__)
            return sshagent.failure()

    def _extension(self, payload: bytes, conn: ConnectionState) -> bytes:
        name, contents = sshagent.parse_extension(payload)
        if name == sshagent.EXT_QUERY:
            return sshagent.query_answer(EXTENSIONS)
        if name == sshagent.EXT_SESSION_BIND:
            hostkey, session_id, signature, _forwarding = sshagent.parse_session_bind(contents)
            if not verify_host_signature(hostkey, session_id, signature) or len(conn.hosts) >= 16:
                return sshagent.failure()
            conn.hosts[session_id] = sshagent.fingerprint(hostkey)
            return sshagent.success()
        return sshagent.failure()  # an extension we do not know (draft-miller-ssh-agent 4.7)

    def _sign_request(self, payload: bytes, peer: Peer, conn: ConnectionState) -> bytes | Awaitable[bytes]:
        blob, data, flags = sshagent.parse_sign_request(payload)
        match = self._find(blob, peer)
        if match is None:
            return sshagent.failure()
        key, session = match
        what = sshagent.describe_signed_data(data)
        if what.get("kind") == "ssh-userauth" and "host" not in what:
            for session_id, host in conn.hosts.items():
                if hashlib.sha256(session_id).hexdigest()[:16] == what["session"]:
                    what["host"] = host
        if flags & sshagent.RSA_FLAGS:
            self.audit(key, session, peer, what, "rsa-sha2 flags asked of a key that is not RSA")
            return sshagent.failure()
        if key.confirm or key.touch:
            return self._ask_then_sign(key, session, peer, data, what)
        return self._sign(key, session, peer, data, what)

    def _find(self, blob: bytes, peer: Peer) -> tuple[SshKey, Session] | None:
        for listed, key, session in self.listed(peer):
            if listed == blob:
                return key, session
        for key in self.keys:  # a known key whose vault's rules refuse this peer: audit the refusal
            other = self.state.sessions.get(key.vault)
            if other is not None and self.blob(other, key) == blob:
                self.audit(key, other, peer, {}, "access-denied")
        return None

    def _sign(self, key: SshKey, session: Session, peer: Peer, data: bytes, what: dict[str, str | int]) -> bytes:
        if self.state.sessions.get(key.vault) is not session:
            return sshagent.failure()  # locked while a person was asked
        try:
            self.audit(key, session, peer, what, None)
        except AgentError:
            return sshagent.failure()  # no audit line, no signature
        from ..vault.identities import ssh_private_key

        private = ssh_private_key(session.secret, key.label, key.type)
        signature = sshagent.sign(private, data)
        del private
        if session.idle_ttl > 0:
            session.idle_deadline = self.state.clock() + session.idle_ttl
            if self.state.mirror is not None:
                self.state.mirror.extend(key.vault, session.idle_deadline)
        session.releases += 1
        return sshagent.sign_response(signature)

    async def _ask_then_sign(self, key: SshKey, session: Session, peer: Peer, data: bytes,
                             what: dict[str, str | int]) -> bytes:
        """A person first: the pinentry confirmation (``confirm``), then the token's touch (``touch``)."""
        refused = await self._confirmed(key, peer, what) if key.confirm else None
        if refused is None and key.touch:
            refused = await self._touched(key, session)
        if refused is not None:
            self.audit(key, session, peer, what, refused)
            return sshagent.failure()
        return self._sign(key, session, peer, data, what)

    async def _confirmed(self, key: SshKey, peer: Peer, what: dict[str, str | int]) -> str | None:
        """None if the person said yes; else why not."""
        config = self.state.config
        if not config.pinentry:
            return "confirm needs a pinentry program (config [agent] pinentry)"
        text = (f"Allow {peer.exe or 'a program'} (pid {peer.pid}) to sign with the SSH key "
                f"'{key.vault}/{key.label}'? ({_what_text(what)})")
        pinentry = Pinentry(config.pinentry, config.pinentry_tty, timeout=60.0)
        yes = await asyncio.to_thread(pinentry.confirm, text)  # a no where the dialog fails
        return None if yes else "cancelled"

    async def _touched(self, key: SshKey, session: Session) -> str | None:
        """None if the token that unlocked the vault opened it again now (its touch, and its PIN where
        the slot needs one); else why not. The token proves it is there and a person touched it."""
        reader = session.token
        if reader is None:
            return "touch needs the vault unlocked by a plugged token (it was unlocked by a client)"
        loop = asyncio.get_running_loop()
        config = self.state.config
        pinentry = Pinentry(config.pinentry, config.pinentry_tty) if config.pinentry else None
        opened = await asyncio.to_thread(open_with_token, self.state.store, key.vault, reader,
                                         in_loop(loop, self.state.emit), config.touch_timeout, pinentry, None,
                                         in_loop(loop, self.touch_notice) if self.touch_notice else None)
        if not isinstance(opened, Opened):
            return "no touch: the token did not open the vault"
        try:
            same = hmac.compare_digest(bytes(opened.key), bytes(session.secret))
        finally:
            wipe(opened.key)
        return None if same else "the token opened another secret"

    # --- audit ----------------------------------------------------------------------------------
    def audit(self, key: SshKey, session: Session, peer: Peer, what: dict[str, str | int], error: str | None) -> None:
        """One JSON line per signature asked for, made or refused; raises AgentError if it cannot be written."""
        if not self.state.config.audit or self.state.audit_path is None:
            return
        line = json.dumps({"op": "ssh-sign", "time": round(time.time(), 3), "vault": key.vault, "key": key.label,
                           "key_type": key.type, "ok": error is None, "error": error, "pid": peer.pid,
                           "uid": peer.uid, "exe": peer.exe, "parent_exe": peer.parent_exe, "signed": what},
                          sort_keys=True, ensure_ascii=True) + "\n"
        self.state.write_audit(line.encode())  # the agent's one audit writer (daemon/audit.py)

    def close(self) -> None:
        """Nothing to close: the audit log is the agent state's."""


def _what_text(what: dict[str, str | int]) -> str:
    if what.get("kind") == "sshsig":
        return f"a signature in namespace {what['namespace']}"
    if what.get("kind") == "ssh-userauth":
        return f"log in as {what['user']}" + (f" to host key {what['host']}" if "host" in what else "")
    return "unrecognised data"


# --- keys --------------------------------------------------------------------------------------
_ECDSA_HASHES = {b"ecdsa-sha2-nistp256": "SHA256", b"ecdsa-sha2-nistp384": "SHA384", b"ecdsa-sha2-nistp521": "SHA512"}
_RSA_HASHES = {b"rsa-sha2-256": "SHA256", b"rsa-sha2-512": "SHA512"}


def verify_host_signature(hostkey: bytes, data: bytes, signature: bytes) -> bool:
    """Is ``signature`` (SSH format) the host key's signature of ``data``? (session-bind)"""
    import base64

    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    try:
        key = serialization.load_ssh_public_key(sshagent.key_type_of(hostkey) + b" " + base64.b64encode(hostkey))
        r = sshagent.Reader(signature)
        alg, raw = r.string(), r.string()
        r.end()
        if isinstance(key, ed25519.Ed25519PublicKey) and alg == sshagent.ED25519:
            key.verify(raw, data)
        elif isinstance(key, ec.EllipticCurvePublicKey) and alg in _ECDSA_HASHES:
            parts = sshagent.Reader(raw)
            rs = int.from_bytes(parts.string(), "big"), int.from_bytes(parts.string(), "big")
            parts.end()
            key.verify(encode_dss_signature(*rs), data, ec.ECDSA(getattr(hashes, _ECDSA_HASHES[alg])()))
        elif isinstance(key, rsa.RSAPublicKey) and alg in _RSA_HASHES:
            key.verify(raw, data, padding.PKCS1v15(), getattr(hashes, _RSA_HASHES[alg])())
        else:
            return False
    except (sshagent.WireError, ValueError, UnsupportedAlgorithm, InvalidSignature):
        return False
    return True


# --- the socket --------------------------------------------------------------------------------
class SshSocket:
    """The listening ssh-agent socket of the agent and its asyncio server."""

    def __init__(self, sock: socket.socket, path: Path, service: SshService) -> None:
        self.sock, self.path, self.service = sock, path, service
        self.clients = 0
        self.max_clients = MAX_CLIENTS
        self._acceptor: Acceptor | None = None

    @classmethod
    def bind(cls, agent_socket: Path, state: AgentState) -> SshSocket | None:
        path = Path(_locations.ssh_socket(str(agent_socket)))
        if len(os.fsencode(path)) > MAX_SUN_PATH:
            log.warning("no ssh-agent socket: %s is too long for a Unix socket address", path)
            return None
        try:
            clear_old_socket(path)
            sock = bind_private(path)
        except (OSError, UnsafePath, AgentError) as err:
            log.warning("no ssh-agent socket at %s: %s", path, err)
            return None
        sock.listen(MAX_BACKLOG)
        sock.setblocking(False)
        return cls(sock, path, SshService(state))

    async def start(self, cap: int = MAX_CLIENTS) -> None:
        self.max_clients = max(1, cap - 1)  # one more accepted than served: it is closed at once
        self._acceptor = Acceptor(self.sock, lambda: _SshProtocol(self), cap)
        self._acceptor.start()
        log.info("ssh-agent socket on %s (%d keys configured)", self.path, len(self.service.keys))

    def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
        self.service.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class _SshProtocol(StallingFramesClose):
    """One ssh-agent client: requests answered in order; one waiting for a confirmation holds the rest."""

    def __init__(self, server: SshSocket) -> None:
        self.server = server
        self.conn = sshagent.AgentConnection()
        self.state = ConnectionState()
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.waiting: asyncio.Task[None] | None = None
        self.stall: asyncio.TimerHandle | None = None
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = self._admit(transport, full=self.server.clients >= self.server.max_clients)
        if peer is None:
            return
        self.peer = peer
        self.server.clients += 1
        self.counted = True

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.transport is None or self.transport.is_closing():
            return
        self.conn.receive_data(data)
        self._serve()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._serve()
        return self.waiting is not None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.server._acceptor is not None:
            self.server._acceptor.release()
        if self.counted:
            self.server.clients -= 1
            self.counted = False
        if self.waiting is not None:
            self.waiting.cancel()
        if self.stall is not None:
            self.stall.cancel()

    def _serve(self) -> None:
        transport, peer = self.transport, self.peer
        assert transport is not None and peer is not None
        while self.waiting is None and not transport.is_closing():
            try:
                message = self.conn.next_message()
            except FrameError:
                transport.close()  # the framing is lost
                return
            if message is NEED_DATA:
                self._arm_stall_timer()
                return
            if message is CLOSED or not isinstance(message, tuple):
                transport.close()
                return
            answer = self.server.service.handle(message[0], message[1], peer, self.state)
            if isinstance(answer, bytes):
                transport.write(answer)
            else:
                self._answer_later(answer, self._write, sshagent.failure(), "an ssh-agent signature")

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

