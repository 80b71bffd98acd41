"""Process hardening for a process that holds keys: no core dumps, no same-uid ptrace or /proc/PID/mem.

``PR_SET_DUMPABLE 0`` makes the kernel refuse ptrace attaches and /proc/PID/mem reads from
other processes of the same uid (root keeps CAP_SYS_PTRACE, as always), and stops core dumps;
``RLIMIT_CORE 0`` is the belt to those braces. Python cannot keep secrets out of swap or out
of copies it makes itself; docs/agent.md says what this does and does not protect.
"""

from __future__ import annotations

import ctypes
import logging
import resource

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
log = logging.getLogger(__name__)


LIBC_SONAME = "libc.so.6"  # glibc's soname on Linux; ctypes.util.find_library would run /sbin/ldconfig (a fork)
_libc_handle: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    """libc, loaded once by its soname: no process is started to find it (every lock and unlock mlocks)."""
    global _libc_handle
    if _libc_handle is None:
        _libc_handle = ctypes.CDLL(LIBC_SONAME, use_errno=True)
    return _libc_handle


def harden_process() -> dict[str, bool]:
    """Apply what the platform allows; return what took effect."""
    done = {"dumpable_off": False, "core_limit_zero": False}
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        done["core_limit_zero"] = True
    except (ValueError, OSError):
        log.warning("could not set RLIMIT_CORE to 0")
    try:
        libc = _libc()
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
            done["dumpable_off"] = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0
    except OSError:
        pass
    if not done["dumpable_off"]:
        log.warning("could not mark the agent non-dumpable; same-uid processes may read its memory")
    return done


def lock_in_memory(buf: bytearray) -> bool:
    """``mlock`` the pages of ``buf`` so the key is not swapped out; False where not allowed.

    The buffer must not be resized while locked (it would move); ``unlock_memory`` undoes it.
    """
    if not buf:
        return False
    try:
        address = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
        return _libc().mlock(ctypes.c_void_p(address), ctypes.c_size_t(len(buf))) == 0
    except (OSError, ValueError, TypeError):
        return False


def unlock_memory(buf: bytearray) -> None:
    if not buf:
        return
    try:
        address = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
        _libc().munlock(ctypes.c_void_p(address), ctypes.c_size_t(len(buf)))
    except (OSError, ValueError, TypeError):
        pass
