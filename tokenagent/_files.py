"""Reading files that someone else may have planted: regular files only, never a blocking open.

A path in a vault file (a key file's hint) or a vault file itself may name a FIFO, a device
(``/dev/zero``, ``/dev/urandom``, a terminal) or a huge file. ``read_regular`` opens with
``O_NONBLOCK`` (a FIFO with no writer would otherwise block ``open`` forever), checks with
``fstat`` on the open descriptor that it is a regular file (no race with a swapped path),
refuses anything larger than ``max_bytes``, and reads at most that much. ``open_regular`` is
the same check for a descriptor kept open (the audit log, which is appended to).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import UnsafePath, UsageError


class FileTooLarge(Exception):
    """The file is larger than tokenagent reads for this purpose (each caller says so in its own terms)."""

    @property
    def message(self) -> str:
        return str(self.args[0])


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def not_regular(path: str | Path, mode: int, what: str, advice: str = "give a regular file instead") -> UnsafePath:
    """The refusal of ``path`` (its ``st_mode``): one line naming the file, what it is, what to do."""
    return UnsafePath(f"{what} {path} is {_kind(mode)}, not a regular file; {advice}")


def open_regular(path: str | Path, flags: int = os.O_RDONLY, *, mode: int = 0o600, follow: bool = True,
                 owner: int | None = None, what: str = "file", advice: str = "give a regular file instead") -> int:
    """A descriptor of the regular file ``path`` opened with ``flags`` (and ``O_NONBLOCK``: a FIFO never
    blocks the open, for reading or writing); UnsafePath for anything but a regular file (and for a
    symbolic link with ``follow=False``, a file not owned by ``owner``); OSError for a missing or
    unreadable one. ``O_NONBLOCK`` changes nothing for a regular file's reads and writes."""
    flags |= os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, mode)
    except OSError as err:
        if err.errno == errno.ELOOP and not follow:
            raise UnsafePath(f"{what} {path} is a symbolic link; tokenagent refuses it: {advice}") from None
        if err.errno in (errno.ENXIO, errno.EISDIR):  # a socket, a FIFO without a reader, a directory
            with contextlib.suppress(OSError):
                raise not_regular(path, os.stat(path, follow_symlinks=follow).st_mode, what, advice) from None
            raise UnsafePath(f"{what} {path} is not a regular file; {advice}") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(path, st.st_mode, what, advice)
        if owner is not None and st.st_uid != owner:
            raise UnsafePath(f"{what} {path} is owned by uid {st.st_uid}, not by you")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | Path, max_bytes: int, *, follow: bool = True, owner: int | None = None,
                 what: str = "file", advice: str = "give a regular file instead") -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``; FileTooLarge past it); see
    ``open_regular`` for what is refused."""
    fd = open_regular(path, follow=follow, owner=owner, what=what, advice=advice)
    try:
        if os.fstat(fd).st_size > max_bytes:
            raise FileTooLarge(f"{what} {path} is larger than {max_bytes} bytes; tokenagent does not read it")
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 16, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:  # grew while being read
            raise FileTooLarge(f"{what} {path} is larger than {max_bytes} bytes; tokenagent does not read it")
        return b"".join(chunks)
    finally:
        os.close(fd)


def open_secret_stream(path: str | Path) -> BinaryIO:
    """A file of secrets the user named (``--password-file``, ``--import-secret``): a regular file, or
    a pipe or device as a script may give (``<(pass show x)``), read by the caller up to its own cap.
    The open never blocks (a FIFO with no writer then reads as empty); a directory is refused."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        os.set_blocking(fd, True)  # a pipe with a writer: wait for what it writes
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_small_file(path: str | Path, max_bytes: int, what: str, advice: str = "give a regular file instead") -> bytes:
    """A small regular file the user named (a certificate, a key file, a secret to import), or one
    ``UsageError`` line naming it: a FIFO, a device or a directory, a file over ``max_bytes``, a
    missing or unreadable one."""
    try:
        return read_regular(path, max_bytes, what=what, advice=advice)
    except (UnsafePath, FileTooLarge) as err:
        raise UsageError(err.message) from None
    except FileNotFoundError:
        raise UsageError(f"{what} {path} not found") from None
    except PermissionError:
        raise UsageError(f"{what} {path} cannot be read (permission denied)") from None
    except OSError as err:
        raise UsageError(f"{what} {path} cannot be read ({err.strerror or type(err).__name__})") from None
