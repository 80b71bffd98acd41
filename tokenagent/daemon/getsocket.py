"""The get socket: ``get`` answered by a native thread on ``SOCKET.get`` (docs/spec/protocol.md).

Theory of operation. ``get`` is the one request clients make often (every backup run, every
password command), and a Python event loop costs several times what ssh-agent spends on a
request. So the agent listens on a second socket next to its own, ``agent.sock.get``, where a
thread of the C extension ``_getserver`` that never takes the GIL serves the success path of
``get`` in a small binary form: the key, once its audit line is written whole, or "ask the
agent socket", for everything else. The client then asks the agent socket, whose
``AgentState._get`` gives the refusal, its message and its audit line: each rule and each
message has one implementation, in Python.

The agent stays the only one to decide. It mirrors into the thread each unlocked vault whose
client rules the C code decides exactly as Python does (``served_natively``: no rules, or
``allow_uids`` only) with ``put`` (the secret, the deadlines, allow_uids), and removes it on lock
(``drop``: wiped at once); a vault with any other rule is not mirrored, so all its gets go to the
agent socket. It reads back the thread's idle-deadline pushes and release counts (``usage``) for
``expire`` and ``status``. Where it runs, its writer of the audit log is the process's one
writer: the agent socket's lines go through ``audit_write`` too (daemon/audit.py).

The socket gets the same protection as the agent's: same private directory, bound under
umask 0177 and chmod 0600, peers other than our uid and root closed before a byte is read.
Where the extension was not built (no C compiler or no libcrypto headers at install time) or
``get_socket = false`` is configured, there is no get socket and clients use the agent socket
for ``get`` too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
from pathlib import Path

from .. import _locations
from ..errors import AgentError, UnsafePath
from .config import VaultPolicy
from .sockets import MAX_BACKLOG, bind_private, clear_old_socket
from .state import Session

try:
    from . import _getserver
except ImportError:  # built without a C compiler
    _getserver = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
MAX_SUN_PATH = 107  # sockaddr_un's sun_path less its terminating 0
# The VaultPolicy fields the C code applies as Python does (lifetimes are mirrored as deadlines;
# unlock_on_plug is not a client rule). Any other field away from its default keeps a vault off it.
_NATIVE_FIELDS = frozenset({"idle_ttl", "max_ttl", "allow_uids", "unlock_on_plug"})
_DEFAULT_POLICY = VaultPolicy()


def served_natively(policy: VaultPolicy) -> bool:
    """Whether the get socket may serve this vault: it decides each of its rules exactly as Python."""
    return all(getattr(policy, f.name) == getattr(_DEFAULT_POLICY, f.name)
               for f in dataclasses.fields(policy) if f.name not in _NATIVE_FIELDS)


def available() -> bool:
    return _getserver is not None


class GetSocket:
    """The native get server of this process (one per process)."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self.sock = sock
        self.path = path

    @classmethod
    def bind(cls, agent_socket: Path) -> GetSocket | None:
        """Bind ``agent_socket`` + ``.get``; None (and a log line saying why) if it cannot be served."""
        if _getserver is None:
            log.info("no get socket: the native extension is not built (get is served on the agent socket)")
            return None
        path = Path(_locations.get_socket(str(agent_socket)))
        if len(os.fsencode(path)) > MAX_SUN_PATH:
            log.warning("no get socket: %s is too long for a Unix socket address", path)
            return None
        try:
            clear_old_socket(path)
            sock = bind_private(path)
        except (OSError, UnsafePath, AgentError) as err:
            log.warning("no get socket at %s: %s", path, err)
            return None
        sock.listen(MAX_BACKLOG)
        return cls(sock, path)

    def start(self, audit_path: os.PathLike[str] | str | None, max_clients: int, frame_timeout: float,
              audit_max_size: int = 0) -> None:
        assert _getserver is not None
        _getserver.start(self.sock.fileno(), None if audit_path is None else os.fspath(audit_path),
                         max_clients, frame_timeout, audit_max_size)
        log.info("get socket on %s", self.path)

    def stop(self) -> None:
        """End the thread, wipe every mirrored vault, remove the socket file."""
        if _getserver is not None:
            _getserver.stop()
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    # --- the mirror of AgentState.sessions (state.KeyMirror) ----------------------------------
    def put(self, session: Session, policy: VaultPolicy) -> None:
        assert _getserver is not None
        if not served_natively(policy):
            _getserver.drop(session.vault)
            return
        _getserver.put(session.vault, session.secret, session.allow_raw, session.idle_ttl,
                       session.idle_deadline, session.hard_deadline, policy.allow_uids)

    def drop(self, vault: str) -> None:
        assert _getserver is not None
        _getserver.drop(vault)

    def extend(self, vault: str, idle_deadline: float) -> None:
        assert _getserver is not None
        _getserver.extend(vault, idle_deadline)

    def usage(self, vault: str) -> tuple[float | None, int] | None:
        assert _getserver is not None
        return _getserver.usage(vault)

    # --- the audit log's one writer in this process (daemon/audit.py) --------------------------
    def audit_write(self, line: bytes) -> int:
        assert _getserver is not None
        return _getserver.audit_write(line)

    def audit_reopen(self) -> None:
        assert _getserver is not None
        _getserver.audit_reopen()
