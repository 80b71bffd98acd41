"""Where the agent's socket lives and who may talk to it (DESIGN §5).

The socket is ``RUNTIME/agent.sock`` (``paths.agent_socket()``), in a directory that must be
ours, 0700 and not a symlink. Before binding: a live agent's socket is left alone (we refuse
to start), a stale socket is removed, anything else at that path (a file, a symlink, a
directory) is refused. The socket is created under umask 0177 so it is never, even for an
instant, reachable by others, and it is chmod 0600 after. Each accepted peer's credentials
come from ``SO_PEERCRED``; only our own uid (and root) get past the first read.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from pathlib import Path

from .. import paths
from ..errors import AgentError, UnsafePath
from .state import Peer

_UCRED = struct.Struct("=iII")
MAX_BACKLOG = 512  # the server's MAX_CLIENTS


def clear_old_socket(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UnsafePath(f"{path} exists and is not a socket; remove it yourself if it is not needed")
    if st.st_uid != os.getuid():
        raise UnsafePath(f"{path} belongs to uid {st.st_uid}; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: its agent is gone
        return
    except OSError as err:
        if err.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)
            return
        raise
    finally:
        probe.close()
    raise AgentError(f"an agent is already running on {path}")


def bind_private(path: Path) -> socket.socket:
    """A Unix stream socket bound at ``path`` with mode 0600 from the start (umask before bind:
    there is no moment when another user could connect)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return sock


def bind_socket(path: Path | None = None) -> tuple[socket.socket, Path]:
    path = path or paths.agent_socket()
    paths.ensure_private_dir(path.parent)
    clear_old_socket(path)
    sock = bind_private(path)
    sock.listen(MAX_BACKLOG)
    sock.setblocking(False)
    return sock, path


def inherited_socket() -> socket.socket | None:
    """The listening socket systemd passed (socket activation), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    sock = socket.socket(fileno=3)
    sock.setblocking(False)
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    return sock


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return Peer(pid, uid, gid, _exe(pid), _exe(_parent(pid)))


def _exe(pid: int | None) -> str | None:
    if not pid:
        return None
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])  # field 4, after the (comm)
    except (OSError, IndexError, ValueError):
        return None


def peer_allowed(peer: Peer) -> bool:
    return peer.uid == os.getuid() or peer.uid == 0
