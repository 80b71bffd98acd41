"""KeePass composite keys: a key file derived from a tokenagent vault.

KeePass (and KeePassXC, KeeWeb, pykeepass) build a database's composite key from all of
its parts: password, key file, challenge-response. A key file that lives next to the
database is no second factor; one that exists only while a token is present is. So the
key file is never stored: ``tokenagent keepass keyfile VAULT`` derives a 32-byte subkey of
the vault for the context label ``keepass:keyfile`` (or ``keepass:<name>`` for several
databases), wraps it in the XML 2.0 key-file format KeePassXC writes (the key in hex, with
the first 4 bytes of its SHA-256 as a check) and hands it to the caller through standard
output or an inherited file descriptor, or runs a command with it as a sealed in-memory
file (``tokenagent keepass exec VAULT -- keepassxc-cli ls -k {keyfile} db.kdbx``: KeePassXC
seeks in key files, so a pipe does not do for it). Writing it to disk needs an explicit
``--output FILE`` (created 0400, never overwritten).

The same vault always yields the same key file, so a database made with it opens
whenever the token that unlocks the vault is present. Changing the label or the vault
(not the vault's slots) changes the key file.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import UsageError, VaultExists
from ..factors.keyfile import keepass_key, xml2_keyfile

CONTEXT_PREFIX = "keepass:"
DEFAULT_NAME = "keyfile"
KEY_LEN = 32


def context_label(name: str = DEFAULT_NAME) -> str:
    """The ``get --context`` label whose subkey is the key file's key."""
    if not name or any(c.isspace() for c in name) or len(name) > 128:
        raise UsageError(f"key file name {name!r}: use 1-128 characters without spaces")
    return CONTEXT_PREFIX + name


def keyfile_from_subkey(subkey: bytes | bytearray) -> bytes:
    """The XML 2.0 key file holding ``subkey``; KeePass reads back exactly ``subkey``."""
    if len(subkey) != KEY_LEN:
        raise UsageError(f"a KeePass key-file key is {KEY_LEN} bytes, not {len(subkey)}")
    data = xml2_keyfile(bytes(subkey))
    if keepass_key(data) != bytes(subkey):  # the shared parser must agree before anything is written
        raise AssertionError("XML 2.0 key file does not round-trip")
    return data


def write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to an inherited descriptor (a pipe, /dev/fd/N of the caller)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as err:
        raise UsageError(f"cannot write the key file to descriptor {fd}: {err.strerror}") from None


def write_file(path: str | Path, data: bytes) -> None:
    """Create ``path`` with mode 0400; refuse to overwrite or to follow a symlink."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
    except FileExistsError:
        raise VaultExists(f"{path} exists already; tokenagent never overwrites a key file") from None
    except OSError as err:
        raise UsageError(f"cannot create {path}: {err.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def sealed_memfd(data: bytes, name: str) -> int:
    """An in-memory, sealed (read-only), inheritable file holding ``data``, positioned at 0.

    Tools that open key files by path and seek in them (KeePassXC does) read it as
    ``/dev/fd/N``; a pipe would not do for them, and a file on disk would outlive the run.
    """
    fd = os.memfd_create(name, os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise
