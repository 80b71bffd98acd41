"""Where the agent's socket is, and how to reach it safely, with ``os`` alone (paths.py wraps these in Path).

The client's fast path (``tokenagent get``) imports this instead of pathlib, which costs it
several milliseconds per run; the rules are those documented in paths.py.

Reaching the socket. A path is a promise about a name, not about who answers: someone who
can change a directory on the way can swap the socket between a check and a connect. So
(docs/agent.md, "What the agent promises"):

- ``open_dir`` walks the directory chain from ``/`` one component at a time with
  ``openat(O_PATH | O_NOFOLLOW)`` and checks each descriptor it got (``fstat``), not the name:
  every directory is owned by us or root, and none that others may write is trusted unless it
  is sticky (``/tmp``); a symlink on the way is followed only if us or root made it, never as
  the last component. The socket's own directory is not writable by group or others (the
  agent, which creates it, demands 0700).
- ``connect`` connects through that descriptor (``/proc/self/fd/N/NAME``), so a directory
  renamed after the walk cannot redirect it, and then asks the *connected* socket who listens
  (``SO_PEERCRED``): anyone but us or root is hung up on before a byte is sent.
"""

# No ``from __future__ import annotations`` (it imports the ``__future__`` module, paid by every
# ``tokenagent get``) and no ``struct``: the annotations below hold at run time or are quoted.
import _socket  # not socket: the fast client does not import it (selectors, enums); same calls
import os
import stat
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads it the same)
if TYPE_CHECKING:
    import socket

ENV_HOME = "TOKENAGENT_HOME"
ENV_SOCKET = "TOKENAGENT_SOCKET"
GET_SUFFIX = ".get"  # the get socket (docs/spec/protocol.md) is the agent socket's path plus this
MAX_SYMLINKS = 40  # as the kernel's own path walk
_UCRED_SIZE = 12  # struct ucred: pid_t pid, uid_t uid, gid_t gid, native order
_OPEN_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def runtime_dir() -> str:
    """$TOKENAGENT_HOME/run, else $XDG_RUNTIME_DIR/tokenagent, else /run/user/UID/tokenagent where that
    directory is ours, else a directory in the user's home: never a name in a shared directory that
    another user could take first (as gpg-agent does; ssh-agent's mkdtemp needs its variable passed)."""
    home = os.environ.get(ENV_HOME)
    if home:
        return os.path.join(home, "run")
    value = os.environ.get("XDG_RUNTIME_DIR")
    if value and os.path.isabs(value):
        return os.path.join(value, "tokenagent")
    uid = os.getuid()
    systemd = f"/run/user/{uid}"
    try:
        st = os.lstat(systemd)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077:
            return os.path.join(systemd, "tokenagent")
    except OSError:
        pass
    state = os.environ.get("XDG_STATE_HOME")
    if not (state and os.path.isabs(state)):
        state = os.path.join(os.path.expanduser("~"), ".local", "state")
    # per host: a home shared between machines must not have one machine's agent take another's socket
    return os.path.join(state, "tokenagent", f"run-{os.uname().nodename}")


def agent_socket() -> str:
    return os.environ.get(ENV_SOCKET) or os.path.join(runtime_dir(), "agent.sock")


def get_socket(agent_socket_path: str) -> str:
    return agent_socket_path + GET_SUFFIX


SSH_SUFFIX = ".ssh"  # the ssh-agent socket (docs/ssh.md) is the agent socket's path plus this


def ssh_socket(agent_socket_path: str) -> str:
    return agent_socket_path + SSH_SUFFIX


def UnsafePath(message: str) -> Exception:  # raised like the class it builds
    """tokenagent.errors.UnsafePath, imported only when there is one to raise (the fast path's cost)."""
    from .errors import UnsafePath as error

    return error(message)


def AgentNotRunning(message: str) -> Exception:
    from .errors import AgentNotRunning as error

    return error(message)


def open_dir(path: str, private: bool = False, create: bool = False) -> int:
    """An ``O_PATH`` descriptor of directory ``path``, reached and checked as the module says.

    ``private``: the directory itself must be ours and 0700 (the agent's demand); otherwise ours or
    root's and not writable by group/other (the client's). ``create``: make missing components
    0700. Raises UnsafePath, or FileNotFoundError for a missing component when not creating.
    """
    uid = os.getuid()
    pending = [c for c in os.path.abspath(path).split("/") if c]
    fd = os.open("/", _OPEN_FLAGS | os.O_DIRECTORY)
    walked = ""
    links = 0
    try:
        while pending:
            name = pending.pop(0)
            last = not pending
            try:
                child = os.open(name, _OPEN_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create or name == "..":
                    raise
                os.mkdir(name, 0o700, dir_fd=fd)
                child = os.open(name, _OPEN_FLAGS, dir_fd=fd)
            st = os.fstat(child)
            where = f"{walked}/{name}"
            if stat.S_ISLNK(st.st_mode):
                os.close(child)
                if last:
                    raise UnsafePath(f"{where} is a symbolic link; tokenagent refuses it: give the real directory")
                if st.st_uid not in (uid, 0):
                    raise UnsafePath(f"{where} is a symbolic link made by uid {st.st_uid}; tokenagent refuses it")
                links += 1
                if links > MAX_SYMLINKS:
                    raise UnsafePath(f"{path}: too many symbolic links")
                target = os.readlink(name, dir_fd=fd)
                pending[:0] = [c for c in target.split("/") if c]
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _OPEN_FLAGS | os.O_DIRECTORY)
                    walked = ""
                continue
            os.close(fd)
            fd = child
            walked = where
            _check_dir(where, st, uid, last, private)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _check_dir(where: str, st: os.stat_result, uid: int, last: bool, private: bool) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{where} is not a directory; move it away")
    if st.st_uid not in ((uid,) if last and private else (uid, 0)):
        raise UnsafePath(f"{where} is owned by uid {st.st_uid}, not by you; tokenagent refuses to use it")
    mode = stat.S_IMODE(st.st_mode)
    if last and mode & (0o077 if private else 0o022):
        raise UnsafePath(f"{where} is open to other users (mode {mode:o}); run: chmod 700 {where}")
    if not last and mode & 0o022 and not mode & stat.S_ISVTX:
        raise UnsafePath(f"{where} can be changed by other users (mode {mode:o}); tokenagent refuses paths through it")


def fd_path(dir_fd: int, name: str) -> str:
    """A name for ``name`` inside the directory of ``dir_fd`` that no rename on the way can redirect."""
    return f"/proc/self/fd/{dir_fd}/{name}" if os.path.isdir("/proc/self/fd") else ""


def connect(path: str, timeout: float | None, lean: bool = False) -> "socket.socket":
    """A socket connected to ``path`` whose listener is us or root (module docstring); nothing sent.

    Raises AgentNotRunning (nothing there, nobody listening, or the backlog full: BlockingIOError
    is passed up for the caller to retry), UnsafePath (someone else's socket or directory).
    ``lean``: a ``_socket.socket`` (``tokenagent get``'s fast path), else a ``socket.socket``.
    """
    directory, name = os.path.split(os.path.abspath(path))
    try:
        dir_fd = open_dir(directory)
    except FileNotFoundError:
        raise AgentNotRunning(_not_running(path)) from None
    try:
        try:
            st = os.stat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            raise AgentNotRunning(_not_running(path)) from None
        if st.st_uid not in (os.getuid(), 0):  # the plain case, refused without even a connection
            raise UnsafePath(f"{path} is owned by uid {st.st_uid}, not by you; not talking to it")
        if not stat.S_ISSOCK(st.st_mode):
            raise UnsafePath(f"{path} is not a socket; not talking to it")
        sock: socket.socket
        if lean:  # the C socket object: what the fast client needs (send, recv), without the socket module
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)  # type: ignore[assignment]
        else:
            import socket as socket_module

            sock = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM | socket_module.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(fd_path(dir_fd, name) or os.path.join(directory, name))
            check_peer(sock, path)
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            raise AgentNotRunning(f"no agent is listening on {path}; start one: tokenagent agent") from None
        except BaseException:
            sock.close()
            raise
        return sock
    finally:
        os.close(dir_fd)


def peer_credentials(sock: "socket.socket") -> tuple[int, int, int]:
    """The pid, uid and gid of the process at the other end of a connected Unix socket (``SO_PEERCRED``)."""
    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _UCRED_SIZE)
    order = sys.byteorder
    return (int.from_bytes(cred[0:4], order, signed=True), int.from_bytes(cred[4:8], order),
            int.from_bytes(cred[8:12], order))


def trusted_uid(uid: int) -> bool:
    """The one owner rule of both ends of our sockets: us, or root."""
    return uid == os.getuid() or uid == 0


def check_peer(sock: "socket.socket", path: str) -> None:
    """Refuse a connected socket whose listener is not us or root (``SO_PEERCRED``)."""
    uid = peer_credentials(sock)[1]
    if not trusted_uid(uid):
        raise UnsafePath(f"{path} is served by uid {uid}, not by you; not talking to it")


def _not_running(path: str) -> str:
    return (f"no agent is running ({path} does not exist); start one: tokenagent agent"
            " (or systemctl --user start tokenagent.socket)")


# --- the vault files' directory (paths.py wraps these in Path; the rules are documented there) ----------
# Here with ``os`` alone so that ``tokenagent list`` and the shell completion of vault names (_cli/agentverbs.py)
# find the names without pathlib, the error tree or the vault code.

VAULT_SUFFIX = ".vault"  # vault/store.py's SUFFIX


def as_path(path: str) -> str:
    """``path`` as ``str(pathlib.PurePosixPath(path))`` spells it: repeated and trailing slashes and
    ``.`` components dropped (so that messages name a directory as paths.py's Path objects do)."""
    root = "//" if path.startswith("//") and not path.startswith("///") else "/" if path.startswith("/") else ""
    return (root + "/".join(c for c in path.split("/") if c and c != ".")) or "."


def _xdg(var: str, fallback: str) -> str:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return as_path(value)
    home = os.path.expanduser("~")
    if home.startswith("~"):  # as pathlib.Path.home()
        raise RuntimeError("Could not determine home directory.")
    return as_path(os.path.join(home, fallback))


def data_dir() -> str:
    """Vault files live here (not created by this call)."""
    home = os.environ.get(ENV_HOME)
    if home:
        return as_path(os.path.join(home, "data"))
    return os.path.join(_xdg("XDG_DATA_HOME", ".local/share"), "tokenagent")


def config_dir() -> str:
    home = os.environ.get(ENV_HOME)
    if home:
        return as_path(os.path.join(home, "config"))
    return os.path.join(_xdg("XDG_CONFIG_HOME", ".config"), "tokenagent")


def check_private_dir(path: str) -> None:
    """Refuse a directory that is a symlink, not ours, or reachable by group/other."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UnsafePath(f"{path} does not exist") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{path} is a symbolic link; tokenagent refuses it: replace it with a real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is not a directory; move it away")
    if st.st_uid != os.getuid():
        raise UnsafePath(f"{path} is owned by uid {st.st_uid}, not by you; tokenagent refuses to use it")
    if st.st_mode & 0o077:
        raise UnsafePath(f"{path} is open to other users (mode {stat.S_IMODE(st.st_mode):o}); run: chmod 700 {path}")


def ensure_private_dir(path: str) -> str:
    """Create ``path`` (and missing parents) as 0700 if absent, then check it."""
    if not os.path.lexists(path):
        old = os.umask(0o077)
        try:
            os.makedirs(path, 0o700, exist_ok=True)
        finally:
            os.umask(old)
    check_private_dir(path)
    return path


def vault_dir() -> str:
    """The directory of vault files, created private on first use."""
    return ensure_private_dir(os.path.join(ensure_private_dir(data_dir()), "vaults"))


def vault_names(directory: str) -> list[str]:
    """The vaults in ``directory``, from their file names (``NAME.vault``; not hidden files), sorted."""
    suffix = VAULT_SUFFIX
    return sorted(n[: -len(suffix)] for n in os.listdir(directory) if n.endswith(suffix) and not n.startswith("."))
