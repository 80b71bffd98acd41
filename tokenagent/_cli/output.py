"""Standard output that fails (a full disk, a closed pipe, a device error): one line that says so.

A command's own files have their errors translated where they are used (StorageError); its
standard output is told apart where it is written: ``tokenagent get`` (which writes its key with
``os.write``, past Python's buffer) ends with ``output_failed`` itself, the quick agent verbs
raise ``OutputError``, which the boundary (``entry.main``) hands to it. Commands that print
through click get the storage line of ``main.run`` for a full disk.
"""

from __future__ import annotations

import errno
import os
import sys

EXIT_PIPE = 141  # as a shell reports a process that SIGPIPE ended: the reader closed the pipe early


class OutputError(OSError):
    """Standard output failed: raised where a command writes it (the quick verbs), said by ``entry.main``."""


def stdout_error(err: OSError) -> OutputError:
    return OutputError(err.errno, err.strerror)


def output_failed(err: OSError) -> int:
    """One line for standard output that failed (none for a reader that closed the pipe early: the
    reader knows), and the exit code. Standard output is pointed at /dev/null after it, so the
    interpreter's last flush does not fail once more with a message of its own."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass
    if isinstance(err, BrokenPipeError) or err.errno == errno.EPIPE:
        return EXIT_PIPE
    try:
        sys.stderr.write(f"tokenagent: cannot write to standard output: {err.strerror or type(err).__name__};"
                         " the command's output is lost (check where it goes: a full disk, a device)\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return 1
