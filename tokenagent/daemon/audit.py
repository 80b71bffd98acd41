"""The audit log: one JSON line per key request, appended by the agent and by its get socket.

Theory of operation. No audit line, no key: a key leaves the agent only once its line is in the
log whole. A line is appended with one ``write`` whose length is checked; a line cut short (a
full disk) is truncated away again (our bytes end at the offset ``O_APPEND`` left), so readers
never see a torn line, and the key is refused. Where the get socket's extension is loaded, it
is the one writer of the process (its thread and, through ``audit_write``, this module share
its descriptor under one mutex, with the file's size kept there); without it, ``AuditLog``
writes itself. Lines are not ``fsync``ed one by one (that would cost a disk flush per key): a
written line is in the kernel and survives the agent's own crash; a power loss can take the
last few seconds of lines with it. The file is synced before each rotation.

Rotation: when a line would take the file past ``audit_max_size`` bytes, ``AuditLog`` (the agent
socket's side, and only it) renames ``audit.log`` to ``audit.log.1`` (``.1`` to ``.2``, ...,
dropping the one past ``audit_keep``), has the writer reopen the path, and writes the line to the
new file. The get socket never rotates: a line that would pass the cap there is not written and
the request is sent to the agent socket ("ask the agent socket"), whose write rotates first.
Lines written between the rename and the reopen go to the end of ``audit.log.1``: they are
older than the line that rotated, so the order across the files is kept.

The log is a regular file or nothing is written: both writers open it with ``O_NONBLOCK`` (a FIFO
planted at the path would block the open, and with it the agent, until someone read it) and
refuse anything that ``fstat`` does not call a regular file. The agent keeps running and says so
at start (``check_path``); every get is refused, with that reason, until the thing is removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterator
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, Protocol

from .._files import not_regular, open_regular
from ..errors import UnsafePath

FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
DEFAULT_MAX_SIZE = 16 * 1024 * 1024
DEFAULT_KEEP = 4
ADVICE = "remove it (the agent then starts a new log); until then no key is released"

# One JSON object per line, keys sorted. The get socket writes the same line for its releases
# (tests/vectors/get-socket pins both to this format).
_LINE = ('{"context": %s, "error": %s, "exe": %s, "ok": %s, "op": "get", "parent_exe": %s, "pid": %d,'
         ' "time": %.3f, "uid": %d, "vault": %s}\n')


def _json_str(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def audit_line(vault: str, context: str | None, pid: int, uid: int, exe: str | None, parent_exe: str | None,
               error: str | None, when: float) -> bytes:
    """The line of one get: released (``error`` None) or refused with that code."""
    return (_LINE % (_json_str(context), _json_str(error), _json_str(exe), "true" if error is None else "false",
                     _json_str(parent_exe), pid, when, uid, _json_str(vault))).encode()


class NativeWriter(Protocol):
    """The get socket's writer (daemon/getsocket.py): its descriptor, size and mutex."""

    def audit_write(self, line: bytes) -> int: ...  # 0 written whole, 1 due to rotate; OSError: not written
    def audit_reopen(self) -> None: ...


class AuditLog:
    """The agent socket's writer of one audit log (see the module docstring)."""

    def __init__(self, path: os.PathLike[str] | str, max_size: int = DEFAULT_MAX_SIZE, keep: int = DEFAULT_KEEP,
                 native: NativeWriter | None = None) -> None:
        self.path = os.fspath(path)
        self.max_size = max_size
        self.keep = max(1, keep)
        self.native = native  # the get socket's writer (same path and cap), where it runs
        self._fd: int | None = None
        self._size = 0

    def write(self, line: bytes) -> None:
        """Append ``line`` whole or raise OSError (nothing of it left in the file)."""
        if self.native is not None:
            if self.native.audit_write(line) == 1:
                self._shift_names()
                self.native.audit_reopen()
                self.native.audit_write(line)  # an empty file takes any line
            return
        if self._fd is None:
            self._fd = open_regular(self.path, FLAGS, follow=False, what="the audit log", advice=ADVICE)
            self._size = os.fstat(self._fd).st_size
        if self.max_size > 0 and self._size > 0 and self._size + len(line) > self.max_size:
            os.fsync(self._fd)
            self._shift_names()
            self.close()
            self.write(line)
            return
        try:
            written = os.write(self._fd, line)
        except OSError:
            self.close()
            raise
        if written != len(line):
            with contextlib.suppress(OSError):  # no torn line: the part that went in comes out again
                os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_CUR) - written)
            self.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)
        self._size += written

    def _shift_names(self) -> None:
        for i in range(self.keep, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(rotated_name(self.path, i - 1), rotated_name(self.path, i))

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def check_path(path: os.PathLike[str] | str) -> str | None:
    """Why nothing can be written at ``path`` (something there that is not a regular file), or None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None  # absent (made at the first line) or unreadable (the write says why)
    if stat.S_ISLNK(st.st_mode):
        return f"the audit log {os.fspath(path)} is a symbolic link; tokenagent refuses it: {ADVICE}"
    if not stat.S_ISREG(st.st_mode):
        return not_regular(os.fspath(path), st.st_mode, "the audit log", ADVICE).message
    return None


def write_refusal(path: os.PathLike[str] | str, err: OSError | UnsafePath) -> str:
    """The one line that says why a line could not go into the log at ``path``."""
    if isinstance(err, UnsafePath):
        return err.message
    return check_path(path) or (f"cannot write the audit log {os.fspath(path)}: {err.strerror or err};"
                                " nothing is released without its audit line")


def rotated_name(path: str, index: int) -> str:
    return path if index == 0 else f"{path}.{index}"


def log_files(path: os.PathLike[str] | str) -> list[Path]:
    """The log and its rotated files that exist, oldest first."""
    base = os.fspath(path)
    found = []
    for i in range(1000):
        name = Path(rotated_name(base, i))
        if not name.exists():
            if i > 0:
                break
            continue
        found.append(name)
    return found[::-1]


def read_records(path: os.PathLike[str] | str) -> Iterator[dict[str, Any]]:
    """Every line of the log and its rotated files, oldest first; a line that is not a JSON object
    (from a damaged file) is given as ``{"unreadable": TEXT}``."""
    for name in log_files(path):
        with os.fdopen(open_regular(name, follow=False, what="the audit log", advice="remove it"), "rb") as f:
            for raw in f:
                text = raw.decode("utf-8", "replace").rstrip("\n")
                if not text:
                    continue
                try:
                    record = json.loads(text)
                except ValueError:
                    record = None
                yield record if isinstance(record, dict) else {"unreadable": text[:200]}
