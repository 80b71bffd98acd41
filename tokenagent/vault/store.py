"""Vault files on disk: one file per vault, written atomically, locked, with a backup copy.

Theory of operation. ``NAME.vault`` is the vault; ``NAME.vault.bak`` is the version before
the last change; ``.NAME.lock`` is the flock(2) target. Every change is a read-modify-write
under an exclusive lock: read the current file, let the caller build the next version from
it (the caller checks its MAC with the secret it already holds, so a concurrent change is
merged rather than overwritten), then

    1. write the current bytes to NAME.vault.bak (temp file, fsync, rename, fsync dir);
    2. write the new bytes to NAME.vault (temp file, fsync, rename, fsync dir).

A crash at any point leaves NAME.vault as either the old or the new version, whole,
because rename(2) is atomic; the backup is the old or the one before. The backup is read
only when the primary cannot be parsed, and the caller is told (``Vault.from_backup``).
Symlinks are refused everywhere (O_NOFOLLOW), files are 0600 in a 0700 directory.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import paths
from ..errors import UnsafePath, UsageError, VaultBusy, VaultExists, VaultFormatError, vault_not_found
from .format import Vault, parse

SUFFIX = ".vault"
BACKUP_SUFFIX = ".vault.bak"
LOCK_TIMEOUT = 30.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    if not _NAME.match(name) or name.endswith((".bak", ".lock")):
        raise UsageError(
            f"invalid vault name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def _read_nofollow(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafePath(f"{path} is a symbolic link; tokenagent refuses it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{path} is not a regular file")
        if st.st_uid != os.getuid():
            raise UnsafePath(f"{path} is owned by uid {st.st_uid}, not by you")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            if sum(map(len, chunks)) > (1 << 20) + 1:
                break
        return b"".join(chunks)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    _fsync_dir(path.parent)


class VaultStore:
    """The vault files of one user (or of one TOKENAGENT_HOME)."""

    def __init__(self, directory: Path | None = None) -> None:
        self._dir = directory

    @property
    def directory(self) -> Path:
        if self._dir is None:
            self._dir = paths.vault_dir()
        else:
            paths.ensure_private_dir(self._dir)
        return self._dir

    def path(self, name: str) -> Path:
        return self.directory / (check_name(name) + SUFFIX)

    def backup_path(self, name: str) -> Path:
        return self.directory / (check_name(name) + BACKUP_SUFFIX)

    def list(self) -> list[str]:
        return sorted(p.name[: -len(SUFFIX)] for p in self.directory.iterdir() if p.name.endswith(SUFFIX)
                      and not p.name.startswith("."))

    def exists(self, name: str) -> bool:
        return os.path.lexists(self.path(name))

    def load(self, name: str) -> Vault:
        """Parse the vault; fall back to the backup (``from_backup=True``) only if the primary is damaged."""
        primary = self.path(name)
        try:
            data = _read_nofollow(primary)
        except FileNotFoundError:
            raise vault_not_found(name, self.list()) from None
        try:
            return parse(data, name)
        except VaultFormatError as primary_err:
            try:
                vault = parse(_read_nofollow(self.backup_path(name)), name)
            except (OSError, VaultFormatError):
                raise VaultFormatError(f"vault {name!r} is damaged: {primary_err.message}") from None
            return vault.with_changes(from_backup=True)

    @contextmanager
    def locked(self, name: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        lock_path = self.directory / f".{check_name(name)}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise VaultBusy(f"vault {name!r} is being changed by another process; try again") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def create(self, vault: Vault) -> None:
        with self.locked(vault.name):
            if self.exists(vault.name):
                raise VaultExists(f"a vault named {vault.name!r} exists already (see: tokenagent info {vault.name})")
            atomic_write(self.path(vault.name), vault.to_bytes())

    def update(self, name: str, change: Callable[[Vault], Vault]) -> Vault:
        """Locked read-modify-write: ``change`` gets the current version and returns the next (signed)."""
        with self.locked(name):
            current = self.load(name)
            new = change(current)
            if new.seq != current.seq + 1:
                raise VaultBusy(f"vault {name!r} changed while the command ran; run it again")
            primary = self.path(name)
            old_bytes = _read_nofollow(primary)
            if not current.from_backup:
                atomic_write(self.backup_path(name), old_bytes)
            atomic_write(primary, new.to_bytes())
            return new

    def delete(self, name: str) -> None:
        with self.locked(name):
            for p in (self.path(name), self.backup_path(name)):
                if os.path.lexists(p):
                    os.unlink(p)
