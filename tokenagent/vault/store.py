"""Vault files on disk: one file per vault, written atomically, locked, with a backup copy.

Theory of operation. ``NAME.vault`` is the vault; ``NAME.vault.bak`` is the version before
the last change; ``.NAME.lock`` is the flock(2) target. Every change is a read-modify-write
under an exclusive lock: read the current file, let the caller build the next version from
it (the caller checks its MAC with the secret it already holds, so a concurrent change is
merged rather than overwritten), then

    1. write the current bytes to NAME.vault.bak (temp file, fsync, rename, fsync dir);
    2. write the new bytes to NAME.vault (temp file, fsync, re-read and parse the temp file
       with the same reader and limits, check it is the version meant, rename, fsync dir).

A crash at any point leaves NAME.vault as either the old or the new version, whole,
because rename(2) is atomic; the backup is the old or the one before. A version the reader
would refuse is never renamed into place. Temporary files are named ``.NAME.vault.tmp-*``;
one left by a killed writer is removed by the next write (under the lock, so it cannot be
a live writer's). The backup is read only when the primary cannot be parsed; every such
load is announced to ``fallback_listeners`` (the CLI prints it; the agent also notes it for each
vault it unlocks, with the file's sequence number: daemon/state.py), and no
change is written on top of a backup: ``repair`` restores it explicitly, keeping the damaged
file aside as ``NAME.vault.damaged-TIMESTAMP``. Files are opened with O_NOFOLLOW|O_NONBLOCK
and must be regular files of ours (a FIFO or a device is refused, never waited on).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .. import _locations, paths
from .._files import FileTooLarge, read_regular
from ..errors import (
    StorageError,
    UnsafePath,
    UsageError,
    VaultBusy,
    VaultExists,
    VaultFormatError,
    VaultNotFound,
    vault_not_found,
)
from .format import MAX_FILE_BYTES, Vault, parse

SUFFIX = _locations.VAULT_SUFFIX  # ".vault"
BACKUP_SUFFIX = ".vault.bak"
DAMAGED_INFIX = ".vault.damaged-"
LOCK_TIMEOUT = 30.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TEMP = re.compile(r"\.(?P<target>.+)\.tmp-[0-9]+-[0-9]+")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name.endswith((".bak", ".lock")):
        raise UsageError(
            f"invalid vault name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def _read_vault_file(path: Path) -> bytes:
    """A vault file's bytes: a regular file of ours, no symlink, no FIFO, at most MAX_FILE_BYTES."""
    try:
        return read_regular(path, MAX_FILE_BYTES, follow=False, owner=os.getuid(), what="vault file")
    except FileTooLarge:
        raise VaultFormatError(f"vault file {path} is larger than {MAX_FILE_BYTES} bytes") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600, check: Callable[[bytes], None] | None = None) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a mix.

    ``check`` gets the temporary file's bytes as read back from disk, before the rename; if it
    raises, the temporary file is removed and ``path`` is untouched. OSError becomes StorageError.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as err:
        raise StorageError.from_os(err, f"cannot write {path}") from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if check is not None:
            check(_read_vault_file(tmp))
        os.rename(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise StorageError.from_os(err, f"cannot write {path}") from None
        raise
    try:
        _fsync_dir(path.parent)
    except OSError as err:  # renamed already: the new version is in place, its durability is not certain
        raise StorageError.from_os(err, f"wrote {path} but could not sync its directory") from None


@dataclass(frozen=True)
class Repaired:
    """What ``repair`` did: whether it restored the backup, the damaged file kept aside (None: there was
    none), and the vault now in place."""

    restored: bool
    damaged: Path | None
    vault: Vault


FallbackListener = Callable[[Vault], None]


class VaultStore:
    """The vault files of one user (or of one TOKENAGENT_HOME)."""

    # Told of every load that fell back to the backup copy (the CLI prints it, the agent logs it).
    fallback_listeners: ClassVar[list[FallbackListener]] = []

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
        return _locations.vault_names(str(self.directory))

    def exists(self, name: str) -> bool:
        return os.path.lexists(self.path(name))

    def _read(self, path: Path, name: str) -> bytes:
        try:
            return _read_vault_file(path)
        except FileNotFoundError:
            if path == self.path(name) and os.path.lexists(self.backup_path(name)):
                raise VaultNotFound(f"vault {name!r} has no main file, only a backup copy;"
                                    f" run 'tokenagent repair {name}' to restore it") from None
            raise vault_not_found(name, self.list()) from None
        except OSError as err:
            raise StorageError.from_os(err, f"cannot read vault file {path}") from None

    def file_bytes(self, name: str) -> tuple[bytes, ...]:
        """The vault's file as it is, and its backup copy if there is one, unparsed (no factor types
        needed): for a look at the plain parts of the format (the agent's key-disk watch)."""
        main = self._read(self.path(name), name)
        try:
            return main, _read_vault_file(self.backup_path(name))
        except (OSError, VaultFormatError, UnsafePath):
            return (main,)

    def load(self, name: str) -> Vault:
        """Parse the vault; fall back to the backup (``from_backup=True``, announced) only if the primary is damaged."""
        data = self._read(self.path(name), name)
        try:
            return parse(data, name)
        except VaultFormatError as primary_err:
            try:
                vault = parse(_read_vault_file(self.backup_path(name)), name)
            except (OSError, VaultFormatError, UnsafePath):
                raise VaultFormatError(f"vault {name!r} is damaged: {primary_err.message}") from None
            vault = vault.with_changes(from_backup=True, damage=primary_err.message)
            for listener in list(self.fallback_listeners):
                listener(vault)
            return vault

    @contextmanager
    def locked(self, name: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        lock_path = self.directory / f".{check_name(name)}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise UnsafePath(f"{lock_path} is a symbolic link; tokenagent refuses it") from None
            raise StorageError.from_os(err, f"cannot lock vault {name!r} ({lock_path})") from None
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
            self._remove_stale_temps(name)
            yield
        finally:
            os.close(fd)

    def _remove_stale_temps(self, name: str) -> None:
        """Temporary files of this vault left by a killed writer (we hold the lock: no writer is live)."""
        targets = {name + SUFFIX, name + BACKUP_SUFFIX}
        try:
            entries = os.listdir(self.directory)
        except OSError:
            return
        for entry in entries:
            match = _TEMP.fullmatch(entry)
            if match and match["target"] in targets:
                try:
                    os.unlink(self.directory / entry)
                except OSError:
                    pass  # a read-only directory: the next write reports it

    def _written_check(self, expected: Vault, check: Callable[[Vault], None] | None) -> Callable[[bytes], None]:
        """Reads the temporary file back as any later command will, before it is renamed into place."""
        def verify(data: bytes) -> None:
            try:
                parsed = parse(data, expected.name)
            except VaultFormatError as err:
                raise VaultFormatError(f"refusing to write vault {expected.name!r}: the new version would not"
                                       f" load ({err.message}); nothing was changed") from None
            if parsed.body() != expected.body() or parsed.mac != expected.mac:
                raise VaultFormatError(f"refusing to write vault {expected.name!r}: the file did not read back"
                                       " as written; nothing was changed (check the disk)")
            if check is not None:
                check(parsed)
        return verify

    def create(self, vault: Vault, check: Callable[[Vault], None] | None = None) -> None:
        with self.locked(vault.name):
            if self.exists(vault.name):
                raise VaultExists(f"a vault named {vault.name!r} exists already (see: tokenagent info {vault.name})")
            atomic_write(self.path(vault.name), vault.to_bytes(), check=self._written_check(vault, check))

    def update(self, name: str, change: Callable[[Vault], Vault], check: Callable[[Vault], None] | None = None) -> Vault:
        """Locked read-modify-write: ``change`` gets the current version and returns the next (signed).

        ``check`` (e.g. the header MAC with the secret) runs on the new version as read back from
        its temporary file. A vault whose main file is damaged is never changed: nothing is
        written on top of the backup copy until ``repair``.
        """
        with self.locked(name):
            current = self.load(name)
            if current.from_backup:
                raise VaultFormatError(
                    f"vault {name!r}: the main file is damaged ({current.damage}); nothing was changed."
                    f" Run 'tokenagent repair {name}' to restore the backup copy (the damaged file is kept aside)"
                )
            new = change(current)
            if new.seq != current.seq + 1:
                raise VaultBusy(f"vault {name!r} changed while the command ran; run it again")
            primary = self.path(name)
            new_bytes, written_check = new.to_bytes(), self._written_check(new, check)
            written_check(new_bytes)  # before anything is written, the backup included
            old_bytes = self._read(primary, name)

            def same_as_old(data: bytes) -> None:
                if data != old_bytes:
                    raise VaultFormatError(f"refusing to update vault {name!r}: its backup did not read back"
                                           " as written; nothing was changed (check the disk)")

            atomic_write(self.backup_path(name), old_bytes, check=same_as_old)
            atomic_write(primary, new_bytes, check=written_check)  # and again as read back from disk
            return new

    def repair(self, name: str) -> Repaired:
        """Put the backup copy back in place of a damaged main file, keeping the damaged one aside."""
        with self.locked(name):
            primary, backup = self.path(name), self.backup_path(name)
            try:
                return Repaired(False, None, parse(_read_vault_file(primary), name))
            except FileNotFoundError:
                if not os.path.lexists(backup):
                    raise VaultNotFound(f"no vault named {name!r} (see: tokenagent list)") from None
                problem = "the main file is missing"
            except (VaultFormatError, UnsafePath) as err:
                problem = err.message
            except OSError as err:
                raise StorageError.from_os(err, f"cannot read vault file {primary}") from None
            try:
                backup_bytes = _read_vault_file(backup)
                restored = parse(backup_bytes, name)
            except FileNotFoundError:
                raise VaultFormatError(f"vault {name!r} is damaged ({problem}) and has no backup copy;"
                                       " restore it from your own backups") from None
            except (OSError, VaultFormatError, UnsafePath) as err:
                why = err.message if isinstance(err, VaultFormatError | UnsafePath) else err.strerror
                raise VaultFormatError(f"vault {name!r} is damaged ({problem}) and so is its backup copy ({why});"
                                       " restore it from your own backups") from None
            aside = None
            if os.path.lexists(primary):
                aside = self._aside_path(name)
                try:
                    os.link(primary, aside, follow_symlinks=False)
                except OSError as err:
                    raise StorageError.from_os(err, f"cannot keep the damaged file aside as {aside}") from None
            try:
                atomic_write(primary, backup_bytes, check=self._written_check(restored, None))
            except BaseException:
                if aside is not None:  # the damaged file is still in place: no second name for it
                    try:
                        os.unlink(aside)
                    except OSError:
                        pass
                raise
            return Repaired(True, aside, restored)

    def _aside_path(self, name: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        candidate = self.directory / f"{name}{DAMAGED_INFIX}{stamp}"
        n = 1
        while os.path.lexists(candidate):
            n += 1
            candidate = self.directory / f"{name}{DAMAGED_INFIX}{stamp}-{n}"
        return candidate

    def delete(self, name: str) -> None:
        with self.locked(name):
            for p in (self.path(name), self.backup_path(name)):
                if os.path.lexists(p):
                    os.unlink(p)
