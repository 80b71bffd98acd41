"""Where the agent's socket lives and who may talk to it (DESIGN §5).

The socket is ``RUNTIME/agent.sock`` (``paths.agent_socket()``), in a directory that must be
ours, 0700 and not a symlink, reached from ``/`` by ``openat``/``O_NOFOLLOW`` steps
(``_locations.open_dir``: missing components are made 0700). Everything after works on that
directory's descriptor, not on its name: the socket is bound as ``/proc/self/fd/N/agent.sock``,
so a directory swapped after the check cannot move it, and no planted symlink is followed. Before binding: a live agent's socket is left alone (we refuse
to start), a stale socket is removed, anything else at that path (a file, a symlink, a
directory) is refused. The socket is created under umask 0177 so it is never, even for an
instant, reachable by others, and it is chmod 0600 after. Each accepted peer's credentials
come from ``SO_PEERCRED``; only our own uid (and root) get past the first read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .. import _locations, paths
from ..errors import AgentError, UnsafePath
from .peers import identify
from .state import Peer

MAX_BACKLOG = 512  # the server's MAX_CLIENTS

log = logging.getLogger(__name__)
Answer = TypeVar("Answer")


@contextlib.contextmanager
def _private_dir(path: Path, dir_fd: int | None) -> Iterator[int]:
    """``dir_fd``, or a descriptor of ``path``'s directory, opened and checked (closed after)."""
    if dir_fd is not None:
        yield dir_fd
        return
    fd = _locations.open_dir(str(path.parent), private=True, create=True)
    try:
        yield fd
    finally:
        os.close(fd)


def _address(dir_fd: int, path: Path) -> str:
    return _locations.fd_path(dir_fd, path.name) or str(path)


def clear_old_socket(path: Path, dir_fd: int | None = None) -> None:
    with _private_dir(path, dir_fd) as fd:
        try:
            st = os.stat(path.name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise UnsafePath(f"{path} exists and is not a socket; remove it yourself if it is not needed")
        if st.st_uid != os.getuid():
            raise UnsafePath(f"{path} belongs to uid {st.st_uid}; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(_address(fd, path))
        except OSError as err:
            if err.errno in (errno.ECONNREFUSED, errno.ENOENT):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path.name, dir_fd=fd)  # stale: its agent is gone
                return
            raise
        finally:
            probe.close()
    raise AgentError(f"an agent is already running on {path}")


def bind_private(path: Path, dir_fd: int | None = None) -> socket.socket:
    """A Unix stream socket bound at ``path`` with mode 0600 from the start (umask before bind:
    there is no moment when another user could connect), in the checked directory ``dir_fd``."""
    with _private_dir(path, dir_fd) as fd:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(_address(fd, path))  # bind never follows a symlink: a planted name fails here
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old)
        os.chmod(path.name, 0o600, dir_fd=fd)
        return sock


def bind_socket(path: Path | None = None) -> tuple[socket.socket, Path]:
    path = Path(os.path.abspath(path or paths.agent_socket()))
    with _private_dir(path, None) as fd:
        clear_old_socket(path, fd)
        sock = bind_private(path, fd)
    sock.listen(MAX_BACKLOG)
    sock.setblocking(False)
    return sock, path


def inherited_socket() -> socket.socket | None:
    """The listening socket systemd passed (socket activation), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    sock = socket.socket(fileno=3)
    sock.set_inheritable(False)  # systemd passes it inheritable: no program the agent runs gets it
    sock.setblocking(False)
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    return sock


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = _locations.peer_credentials(sock)
    if not pid:
        return Peer(pid, uid, gid)
    who = identify(pid)
    return Peer(pid, uid, gid, who.exe, who.parent_exe, who.start, who.program, who.program_pid)


def peer_allowed(peer: Peer) -> bool:
    return _locations.trusted_uid(peer.uid)


FRAME_TIMEOUT = 10.0  # a frame half-sent this long closes its connection, on every socket of the agent


class StallingFramesClose(asyncio.Protocol):
    """What the agent's socket protocols share. A connection whose frame stalls half-way is closed
    (a slow or hostile client must not hold a connection, and the memory of its frame, forever):
    subclasses keep the frame parser in ``conn`` (its ``pending`` bytes) and call ``_arm_stall_timer``
    whenever they wait for more data. Requests are answered in order: one that must wait (for an
    unlock, for a confirmation) becomes the connection's ``waiting`` task (``_answer_later``), and
    ``_serve`` takes up the frames that arrived meanwhile once it is answered."""

    conn: Any
    transport: Any
    stall: asyncio.TimerHandle | None
    waiting: asyncio.Task[None] | None

    def _serve(self) -> None:
        raise NotImplementedError

    def _admit(self, transport: asyncio.BaseTransport, full: bool = False) -> Peer | None:
        """A new connection's peer (SO_PEERCRED), or None with the connection aborted: credentials
        that cannot be read, or not this user's (nor root's), or (``full``) no room for it. Not a
        byte is read from a stranger."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        try:
            peer = peer_of(transport.get_extra_info("socket"))
        except OSError:
            peer = None
        if peer is None or not peer_allowed(peer) or full:
            transport.abort()
            return None
        return peer

    def _arm_stall_timer(self) -> None:
        if self.conn.pending and self.stall is None:
            self.stall = asyncio.get_running_loop().call_later(FRAME_TIMEOUT, self._stalled)
        elif not self.conn.pending and self.stall is not None:
            self.stall.cancel()
            self.stall = None

    def _stalled(self) -> None:
        self.stall = None
        if self.conn.pending and self.transport is not None:
            self.transport.close()  # a frame stalled half-way

    def _answer_later(self, answer: Awaitable[Answer], deliver: Callable[[Answer], None], failure: Answer,
                      what: str) -> asyncio.Task[None]:
        """Await ``answer`` as the ``waiting`` task and ``deliver`` it; a bug on the way (logged by
        its type) delivers ``failure`` instead, so a client is answered, never left hanging."""
        self.waiting = asyncio.ensure_future(self._deliver_later(answer, deliver, failure, what))
        return self.waiting

    async def _deliver_later(self, answer: Awaitable[Answer], deliver: Callable[[Answer], None], failure: Answer,
                             what: str) -> None:
        try:
            try:
                result = await answer
            except Exception as err:  # noqa: BLE001 - a bug, or the audit log gone: answer, never hang a client
                log.error("internal error in %s: %s", what, type(err).__name__)
                result = failure
            deliver(result)
        finally:
            self.waiting = None
        if self.transport is not None and not self.transport.is_closing():
            self._serve()


ACCEPT_BACKOFF = 1.0  # out of descriptors all the same (another thread took them): look again this much later


class Acceptor:
    """Accepts the clients of a listening socket, holding at most ``cap`` at once: at the cap the
    socket is not read, so newcomers wait in the listen backlog and are accepted as held ones close
    (asyncio's own server accepts a backlog's worth in one go, whatever the descriptor table holds).
    Each accepted client gets ``factory()``'s protocol; the protocol calls ``release()`` from
    ``connection_lost``, once (daemon/resources.py: why the agent keeps descriptors in reserve)."""

    def __init__(self, sock: socket.socket, factory: Any, cap: int) -> None:
        self.sock, self.factory, self.cap = sock, factory, max(1, cap)
        self.held = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._closed = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._resume()

    def close(self) -> None:
        self._closed = True
        self._pause()

    def release(self) -> None:
        self.held -= 1
        if not self._reading and self.held < self.cap:
            self._resume()

    def _resume(self) -> None:
        if self._loop is not None and not self._reading and not self._closed:
            self._loop.add_reader(self.sock.fileno(), self._accept)
            self._reading = True

    def _pause(self) -> None:
        if self._loop is not None and self._reading:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _accept(self) -> None:
        assert self._loop is not None
        while self.held < self.cap:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EMFILE, ENOBUFS...: stop reading the socket for a while
                self._pause()
                self._loop.call_later(ACCEPT_BACKOFF, self._resume)
                return
            conn.setblocking(False)
            self.held += 1
            self._loop.create_task(self._connect(conn))
        self._pause()  # at the cap: the backlog holds the rest

    async def _connect(self, conn: socket.socket) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(self.factory, conn)
        except OSError:
            conn.close()
            self.release()  # no protocol got it: nothing else gives it back
