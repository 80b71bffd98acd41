"""Reading files that someone else may have planted: regular files only, never a blocking open.

A path in a vault file (a key file's hint) or a vault file itself may name a FIFO, a device
(``/dev/zero``, ``/dev/urandom``, a terminal) or a huge file. ``read_regular`` opens with
``O_NONBLOCK`` (a FIFO with no writer would otherwise block ``open`` forever), checks with
``fstat`` on the open descriptor that it is a regular file (no race with a swapped path),
refuses anything larger than ``max_bytes``, and reads at most that much.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import UnsafePath


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


def read_regular(path: str | Path, max_bytes: int, *, follow: bool = True, owner: int | None = None,
                 what: str = "file") -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``); OSError for a missing/unreadable one.

    ``follow=False`` refuses a symbolic link (``O_NOFOLLOW``); ``owner`` refuses a file owned by another uid.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP and not follow:
            raise UnsafePath(f"{what} {path} is a symbolic link; tokenagent refuses it") from None
        if err.errno == errno.ENXIO:  # a socket, or a FIFO opened for writing elsewhere
            raise UnsafePath(f"{what} {path} is not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{what} {path} is {_kind(st.st_mode)}, not a regular file; tokenagent reads only files")
        if owner is not None and st.st_uid != owner:
            raise UnsafePath(f"{what} {path} is owned by uid {st.st_uid}, not by you")
        if st.st_size > max_bytes:
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
