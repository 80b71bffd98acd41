"""What the agent process loads and holds: its memory at start and its descriptor table.

Theory of operation. An idle agent (nothing unlocked, no token seen) should cost little memory,
so the heavy parts are loaded when first needed, in one place: ``load_token_stack`` (every
factor type, the token drivers with python-fido2, yubikit and pyscard's card calls, and
cryptography) runs before the agent's first vault read, because parsing a vault needs its factor
types and opening it needs cryptography. The agent's store (``AgentStore``) calls it in ``load``;
a token that arrives is tried through that store too (daemon/plug.py).

A lazy import needs descriptors (each module file is opened), and so do a vault read, pcscd
and a hidraw device. A flood of clients must not take them all: that is how an import at the
first vault read once failed half-way. So the agent holds at most ``client_budget`` client
connections at once over all its sockets, computed at start from ``RLIMIT_NOFILE`` (the soft
limit raised towards the hard one as far as the caps and the reserve need, not further), keeping
``reserve`` descriptors for its own work. Clients beyond the caps wait in the listen backlog and
are accepted as others close (daemon/sockets.py's ``Acceptor``; the get socket's thread closes
what it cannot hold).

asyncio imports ``ssl`` for its optional TLS support; with libssl that is a few MiB the agent,
which serves only Unix sockets, never uses. ``asyncio_without_tls`` imports asyncio with ``ssl``
hidden for that one import only: asyncio then has no TLS in this process (its TLS calls would
say "ssl module is not available"), while any later ``import ssl`` gets the real module. It is
called by the agent process's entry only (``tokenagent agent``), never on import.
"""

from __future__ import annotations

import importlib
import logging
import os
import resource
import sys
import threading

from ..vault import Vault, VaultStore

log = logging.getLogger(__name__)
RESERVE = 48  # descriptors kept for the agent's own work (imports, vault files, pcscd, hidraw, pinentry)
MIN_RESERVE = 12  # under a low limit (tests set 64): a quarter of it, but not fewer than this
_TOKEN_MODULES = ("cryptography.hazmat.primitives.ciphers.aead", "cryptography.hazmat.primitives.kdf.argon2")
_lock = threading.Lock()
_loaded = False


def asyncio_without_tls() -> None:
    """Import asyncio without its optional TLS support (see the module comment); the agent's entry only."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return  # too late, or ssl is in use already: nothing to save
    sys.modules["ssl"] = None  # type: ignore[assignment]  # "import ssl" raises ImportError meanwhile
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]


def load_token_stack() -> None:
    """Every factor type, the token drivers and cryptography, once: before the first vault read."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        from ..plugins import load_factor_types

        load_factor_types()
        for name in _TOKEN_MODULES:
            importlib.import_module(name)
        _loaded = True
        log.debug("factor types, token drivers and cryptography loaded")


class AgentStore(VaultStore):
    """The agent's vault store: the token stack is loaded before a vault is first read."""

    def load(self, name: str) -> Vault:
        load_token_stack()
        return super().load(name)


def reserve_for(limit: int) -> int:
    return min(RESERVE, max(MIN_RESERVE, limit // 4))


def open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir used
    except OSError:
        return 32  # no /proc: a guess on the safe side


def client_budget(wanted: int) -> int:
    """How many client connections the agent may hold at once (all sockets), after raising the soft
    RLIMIT_NOFILE towards the hard limit as far as ``wanted`` clients and the reserve need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = open_descriptors()
    need = in_use + wanted + RESERVE
    if soft != resource.RLIM_INFINITY and soft < need and (hard == resource.RLIM_INFINITY or soft < hard):
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (OSError, ValueError) as err:
            log.debug("descriptor limit not raised: %s", err)
    if soft == resource.RLIM_INFINITY:
        return wanted
    budget = max(0, min(wanted, soft - in_use - reserve_for(soft)))
    if budget < wanted:
        log.warning("descriptor limit %d: the agent holds at most %d clients at once (others wait their turn)",
                    soft, budget)
    return budget


def split_budget(budget: int, wanted: dict[str, int]) -> dict[str, int]:
    """``budget`` shared among sockets: the first named (the agent socket, whose idle connections make
    room for newcomers) gets what it wants first, the others the rest in proportion; at least 1 each."""
    (first, want), *others = wanted.items()
    caps = {first: max(1, min(want, budget - len(others)))}
    rest = max(0, budget - caps[first])
    total = sum(w for _, w in others) or 1
    caps.update({name: max(1, min(w, rest * w // total)) for name, w in others})
    return caps
