"""Who is at the other end of a connection, as far as /proc can say (the program rules of docs/agent.md).

Theory of operation. ``SO_PEERCRED`` gives the pid, uid and gid of the process that connected.
From ``/proc/PID`` the agent reads its executable, its start time (so a pid reused by another
process is not taken for the first) and its parent. The *program* a vault's ``allow_exe`` is
matched against is the peer's executable, except for ``tokenagent get``: a password command
acts for the program that ran it (restic's ``RESTIC_PASSWORD_COMMAND``, borg's
``BORG_PASSCOMMAND``), so its program is its parent's executable, the one the audit line records
as ``parent_exe``. ``identify`` is called at connect and again at each request a rule concerns;
the rule passes only if the program is allowed both times and is still the same process.

``preload`` says whether code was put into a process from outside its program: ``LD_PRELOAD`` or
``LD_AUDIT`` in its environment, or executable mappings of files that are not root's alone (owned by
another uid, writable by group or others, or deleted), other than the program itself. Libraries root
installed, ``/etc/ld.so.preload`` included, are root's business and pass.

What this cannot do (docs/agent.md, "What the agent promises"): a process of the same uid can
ptrace another, write its memory, or run the allowed program itself with a password command
of its choosing. The rules keep other programs from getting a vault's key by mistake or by
simply asking; they are no wall against code running as the user.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

PRELOAD_VARIABLES = (b"LD_PRELOAD=", b"LD_AUDIT=")
MAX_PROC_READ = 1 << 20  # /proc/PID/maps of a large process; more is not read


@dataclass(frozen=True)
class Identity:
    exe: str | None
    start: int | None  # clock ticks after boot: with the pid, one process
    parent: int | None
    parent_exe: str | None
    program: str | None  # what allow_exe is matched against
    program_pid: int | None


def identify(pid: int) -> Identity:
    exe = _exe(pid)
    parent, start = _stat(pid)
    if start is None:
        return Identity(None, None, None, None, None, None)  # gone: nothing known, nothing allowed
    parent_exe = _exe(parent)
    if _acts_for_parent(pid):
        return Identity(exe, start, parent, parent_exe, parent_exe, parent)
    return Identity(exe, start, parent, parent_exe, exe, pid)


def _exe(pid: int | None) -> str | None:
    if not pid:
        return None
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _stat(pid: int) -> tuple[int | None, int | None]:
    """(parent pid, start time) from /proc/PID/stat (fields 4 and 22, after the "(comm)")."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None, None


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_PROC_READ)
    except OSError:
        return None


def _acts_for_parent(pid: int) -> bool:
    """True for ``tokenagent get`` (as a console script, or ``python -m tokenagent...``)."""
    data = _read(f"/proc/{pid}/cmdline")
    if not data:
        return False
    args = data.rstrip(b"\0").split(b"\0")
    for i in (0, 1):
        if len(args) > i + 1 and os.path.basename(args[i]) == b"tokenagent" and args[i + 1] == b"get":
            return True
    for i, arg in enumerate(args[:-2]):
        if arg == b"-m" and args[i + 1] in (b"tokenagent", b"tokenagent._cli.entry") and args[i + 2] == b"get":
            return True
    return False


def preload(pid: int, unreadable_ok: bool = False) -> str | None:
    """Why code from outside its program may run in ``pid``, or None.

    ``unreadable_ok``: a process that made itself non-dumpable (``tokenagent get`` does, against
    core files) hides its environment and maps from its own uid; for a password command that is
    accepted, its program (the parent, whoever chose the command) being checked instead.
    """
    environ = _read(f"/proc/{pid}/environ")
    if environ is None:
        return None if unreadable_ok else "its environment cannot be read"
    for entry in environ.split(b"\0"):
        for variable in PRELOAD_VARIABLES:
            if entry.startswith(variable) and entry[len(variable):].strip():
                return f"{variable[:-1].decode()} is set in its environment"
    maps = _read(f"/proc/{pid}/maps")
    if maps is None:
        return None if unreadable_ok else "its memory map cannot be read"
    exe = _exe(pid)
    seen: set[bytes] = set()
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or b"x" not in fields[1] or not fields[5].startswith(b"/") or fields[5] in seen:
            continue
        path = fields[5]
        seen.add(path)
        if path.endswith(b" (deleted)"):
            return f"it runs code from a deleted file ({_show(path)})"
        if os.fsdecode(path) == exe:
            continue  # the program itself: the rule names it
        try:
            st = os.stat(path)
        except OSError:
            return f"it runs code from a file that is gone ({_show(path)})"
        if st.st_uid != 0 or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode):
            return f"it runs code from {_show(path)}, which is not root's alone"
    return None


def _show(path: bytes) -> str:
    return os.fsdecode(path)[:200]
