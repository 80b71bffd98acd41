"""Where tokenagent keeps its state, and the checks that keep those places private.

``TOKENAGENT_HOME=DIR`` puts everything under DIR (``DIR/data``, ``DIR/config``,
``DIR/run``): tests and independent setups use it. Otherwise the XDG base
directories apply: ``$XDG_DATA_HOME/tokenagent`` (vaults), ``$XDG_CONFIG_HOME/tokenagent``
(config.toml) and ``$XDG_RUNTIME_DIR/tokenagent`` (the agent's socket; _locations.runtime_dir
says where it goes without XDG_RUNTIME_DIR, and how the way to it is checked).

Every directory we create is 0700 and owned by the user; an existing one that is a
symlink, owned by someone else, or open to group/other is refused with ``UnsafePath``
rather than "fixed", because such a state means someone else could have been there.

The rules are written once, with ``os`` alone, in ``_locations`` (which the quick verbs import
without pathlib); this module gives them as Path objects.
"""

from __future__ import annotations

from pathlib import Path

from . import _locations

ENV_HOME = _locations.ENV_HOME


def data_dir() -> Path:
    """Vault files live here (not created by this call)."""
    return Path(_locations.data_dir())


def config_dir() -> Path:
    return Path(_locations.config_dir())


def runtime_dir() -> Path:
    """The agent's socket directory: $XDG_RUNTIME_DIR/tokenagent, else /run/user/UID/tokenagent when
    that is ours, else $XDG_STATE_HOME/tokenagent/run-HOST (never a guessable name in /tmp)."""
    return Path(_locations.runtime_dir())


def agent_socket() -> Path:
    """The agent's socket: ``TOKENAGENT_SOCKET`` if set, else ``runtime_dir()/agent.sock``."""
    return Path(_locations.agent_socket())


def check_private_dir(path: Path) -> None:
    """Refuse a directory that is a symlink, not ours, or reachable by group/other."""
    _locations.check_private_dir(str(path))


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700 if absent, then check it."""
    _locations.ensure_private_dir(str(path))
    return path


def vault_dir() -> Path:
    """The directory of vault files, created private on first use."""
    return Path(_locations.vault_dir())
