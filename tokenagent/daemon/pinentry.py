"""A client of the standard pinentry programs (pinentry-curses, -gnome3, -qt, -tty), over Assuan.

The agent has no terminal; when a plugged token's slot needs a PIN it runs the pinentry
program named in its config, which draws the dialog on the user's desktop (DISPLAY or
WAYLAND_DISPLAY from the agent's environment) or on ``pinentry_tty``. The exchange is
GnuPG's Assuan protocol: the program greets with ``OK``; we send ``OPTION``/``SET...``
lines (``%``-escaped) and ``GETPIN``; it answers ``D <pin>`` (``%``-escaped) and ``OK``, or
``ERR <code> <text>`` when the user cancels. A yes/no question (the ssh socket's ``confirm``
keys) is the same dialog with ``CONFIRM``: ``OK`` is yes, anything else no. The PIN is kept in a bytearray and wiped by
the caller; the program is told ``BYE`` and reaped, and killed if it does not answer.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from collections.abc import Iterator

from ..errors import Cancelled, TokenAgentError, UsageError


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _unescape(data: bytearray) -> bytearray:
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i] == 0x25 and i + 2 < len(data):  # %XX
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(data[i])
            i += 1
    return out


class Pinentry:
    def __init__(self, program: str, ttyname: str | None = None, ttytype: str = "xterm",
                 timeout: float = 120.0) -> None:
        self.program, self.ttyname, self.ttytype, self.timeout = program, ttyname, ttytype, timeout

    def ask(self, description: str, prompt: str = "PIN:", error: str | None = None) -> bytearray:
        """The PIN typed; ``Cancelled`` if the user cancelled or nobody answered in time."""
        settings = [f"SETPROMPT {_escape(prompt)}"] + ([f"SETERROR {_escape(error)}"] if error else [])
        with self._dialog(description, settings) as (proc, deadline):
            self._send(proc, "GETPIN")
            pin = bytearray()
            while True:
                line = self._line(proc, deadline)
                if line.startswith(b"D "):
                    pin = _unescape(line[2:])
                    line[:] = bytes(len(line))
                elif line.startswith(b"OK"):
                    return pin
                elif line.startswith(b"ERR"):
                    raise Cancelled("PIN entry cancelled")
                # S (status) and # (comment) lines are ignored

    def confirm(self, description: str) -> bool:
        """A yes/no question (Assuan ``CONFIRM``): True only for an explicit OK; a program that cannot
        run or does not answer, or a cancel, is a no."""
        try:
            with self._dialog(description, []) as (proc, deadline):
                self._send(proc, "CONFIRM")
                while True:
                    line = self._line(proc, deadline)
                    if line.startswith(b"OK"):
                        return True
                    if line.startswith(b"ERR"):
                        return False
        except TokenAgentError:
            return False

    @contextlib.contextmanager
    def _dialog(self, description: str, settings: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
        """The program running, greeted, told the title, ``description`` and ``settings`` (more SET
        lines), with the deadline of its answer; told ``BYE`` and reaped (killed if it hangs) after."""
        args = [self.program]
        if self.ttyname:
            args += ["--ttyname", self.ttyname, "--ttytype", self.ttytype]
        try:
            proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as err:
            raise UsageError(f"cannot run the pinentry program {self.program!r}: {err.strerror}") from None
        deadline = time.monotonic() + self.timeout
        try:
            self._expect_ok(proc, deadline)
            for command in ["SETTITLE tokenagent", f"SETDESC {_escape(description)}", *settings]:
                self._send(proc, command)
                self._expect_ok(proc, deadline)
            yield proc, deadline
        finally:
            with contextlib.suppress(OSError):
                self._send(proc, "BYE")
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @staticmethod
    def _send(proc: subprocess.Popen[bytes], command: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(command.encode("utf-8") + b"\n")
        proc.stdin.flush()

    def _expect_ok(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        line = self._line(proc, deadline)
        if not line.startswith(b"OK"):
            raise UsageError(f"the pinentry program {self.program!r} answered {line[:80]!r}")

    def _line(self, proc: subprocess.Popen[bytes], deadline: float) -> bytearray:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        data = bytearray()
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise Cancelled("nobody answered the PIN dialog in time")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1)
            if not chunk:
                raise UsageError(f"the pinentry program {self.program!r} ended without an answer")
            data += chunk
        del data[-1:]
        return data
