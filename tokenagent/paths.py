"""Where tokenagent keeps its state, and the checks that keep those places private.

``TOKENAGENT_HOME=DIR`` puts everything under DIR (``DIR/data``, ``DIR/config``,
``DIR/run``): tests and independent setups use it. Otherwise the XDG base
directories apply: ``$XDG_DATA_HOME/tokenagent`` (vaults), ``$XDG_CONFIG_HOME/tokenagent``
(config.toml) and ``$XDG_RUNTIME_DIR/tokenagent`` (the agent's socket; _locations.runtime_dir
says where it goes without XDG_RUNTIME_DIR, and how the way to it is checked).

Every directory we create is 0700 and owned by the user; an existing one that is a
symlink, owned by someone else, or open to group/other is refused with ``UnsafePath``
rather than "fixed", because such a state means someone else could have been there.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from . import _locations
from .errors import UnsafePath

ENV_HOME = _locations.ENV_HOME


def _home_override() -> Path | None:
    value = os.environ.get(ENV_HOME)
    return Path(value) if value else None


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def data_dir() -> Path:
    """Vault files live here (not created by this call)."""
    home = _home_override()
    return home / "data" if home else _xdg("XDG_DATA_HOME", ".local/share") / "tokenagent"


def config_dir() -> Path:
    home = _home_override()
    return home / "config" if home else _xdg("XDG_CONFIG_HOME", ".config") / "tokenagent"


def runtime_dir() -> Path:
    """The agent's socket directory: $XDG_RUNTIME_DIR/tokenagent, else /run/user/UID/tokenagent when
    that is ours, else $XDG_STATE_HOME/tokenagent/run-HOST (never a guessable name in /tmp)."""
    return Path(_locations.runtime_dir())


def agent_socket() -> Path:
    """The agent's socket: ``TOKENAGENT_SOCKET`` if set, else ``runtime_dir()/agent.sock``."""
    return Path(_locations.agent_socket())


def check_private_dir(path: Path) -> None:
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
        raise UnsafePath(
            f"{path} is open to other users (mode {stat.S_IMODE(st.st_mode):o}); run: chmod 700 {path}"
        )


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700 if absent, then check it."""
    if not os.path.lexists(path):
        old = os.umask(0o077)
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        finally:
            os.umask(old)
    check_private_dir(path)
    return path


def vault_dir() -> Path:
    """The directory of vault files, created private on first use."""
    return ensure_private_dir(ensure_private_dir(data_dir()) / "vaults")
