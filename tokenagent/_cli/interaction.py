"""The terminal side of ``Interaction``: prompts, secret files, notices, and the factor context.

Secrets never come from argv. They come from a prompt on the terminal (no echo), or from
``--password-file``, ``--pin-file``, ``--recovery-file`` (``-`` is standard input): one secret
per line, used in the order they are asked for. A secret of a kind that has neither a file
nor a terminal raises ``NotMine`` ("not available"), so an unlock moves on to the next slot
instead of failing: a script that gives only a recovery file still opens a vault whose first
slot is a password. An empty answer at a prompt skips that factor in the same way.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import IO, Any

import click

from .._files import open_secret_stream
from ..errors import Cancelled, NotMine, UsageError
from ..factors.base import Answers, DeviceProvider, FactorContext, Interaction, SecretRequest
from ..factors.password import test_costs_allowed
from .util import printable, progress

MAX_SECRET_FILE = 1 << 20
CACHED_KINDS = ("password", "recovery", "pin")  # asked once per command, whatever the number of slots
FILE_KINDS = {"password": "password", "new-password": "password", "pin": "pin", "puk": "pin", "recovery": "recovery",
              "otp-secret": "otp-secret"}


class SecretLines:
    """The lines of one ``--*-file``, read lazily, handed out one by one."""

    def __init__(self, option: str, path: str) -> None:
        self.option, self.path = option, path
        self._lines: list[bytearray] | None = None

    def _load(self) -> list[bytearray]:
        if self._lines is None:
            stream: IO[bytes]
            try:
                stream = sys.stdin.buffer if self.path == "-" else open_secret_stream(self.path)
            except OSError as err:
                raise UsageError(f"{self.option} {self.path}: {err.strerror}") from None
            try:
                data = bytearray(stream.read(MAX_SECRET_FILE + 1))  # /dev/zero or a huge file: refused, not read
            finally:
                if stream is not sys.stdin.buffer:
                    stream.close()
            if len(data) > MAX_SECRET_FILE:
                data[:] = bytes(len(data))
                raise UsageError(f"{self.option} {self.path}: more than {MAX_SECRET_FILE} bytes; it is not a file of"
                                 " secrets, one per line")
            self._lines = [bytearray(line.rstrip(b"\r")) for line in data.split(b"\n")]
            if self._lines and not self._lines[-1]:
                self._lines.pop()
            data[:] = bytes(len(data))
        return self._lines

    def next(self) -> bytearray:
        lines = self._load()
        if not lines:
            raise NotMine(f"{self.option} has no more lines")
        return lines.pop(0)


class TerminalInteraction(Interaction):
    def __init__(self, files: Mapping[str, SecretLines] | None = None, quiet: bool = False) -> None:
        self.files = dict(files or {})
        self.quiet = quiet
        self.shown: list[dict[str, str]] = []  # secrets shown once, for --json output
        self.defer_secrets = False  # hold shown secrets back until reveal_deferred()
        self._cache = Answers()  # wiped when the command ends (make_context)

    def _tty(self) -> bool:
        return sys.stdin.isatty() and sys.stderr.isatty()

    def ask_secret(self, request: SecretRequest) -> bytearray:
        key = (request.kind, request.prompt)
        cached = self._cache.get(key) if request.kind in CACHED_KINDS else None
        if cached is not None:
            return cached  # one answer serves every slot tried in this command
        source = self.files.get(FILE_KINDS.get(request.kind, request.kind))
        if source is not None:
            answer = source.next()
        elif self._tty():
            answer = self._prompt(request)
        else:
            option = f"--{FILE_KINDS.get(request.kind, request.kind)}-file"
            raise NotMine(f"no {request.kind.replace('new-', '')} given (no terminal; use {option} FILE, '-' = stdin)")
        if request.kind in CACHED_KINDS:
            self._cache.keep(key, answer)
        return answer

    def wipe(self) -> None:
        """Forget the answers kept for this command (called when it ends)."""
        self._cache.wipe()

    def _prompt(self, request: SecretRequest) -> bytearray:
        suffix = f" ({request.retries} tries left)" if request.retries is not None else ""
        hint = "" if request.confirm else " (empty to skip)"
        try:
            first = getpass.getpass(f"{request.prompt}{suffix}{hint}: ")
            if not first and not request.confirm:
                raise NotMine(f"{request.kind} skipped")
            if request.confirm and getpass.getpass(f"{request.prompt} (again): ") != first:
                raise UsageError("the two entries differ; nothing was changed")
        except (EOFError, KeyboardInterrupt):
            raise Cancelled("cancelled at the prompt") from None
        return bytearray(first.encode("utf-8"))

    def notify(self, event: str, message: str) -> None:
        if not self.quiet or event in ("touch", "plug", "warning"):
            prefix = {"touch": ">>> ", "plug": ">>> ", "warning": "warning: "}.get(event, "")
            click.echo(printable(f"{prefix}{message}", keep_newlines=False), err=True)

    def working(self, what: str) -> AbstractContextManager[None]:
        return progress(what, quiet=self.quiet)

    def confirm(self, question: str) -> bool:
        if not self._tty():
            return False
        return click.confirm(question, default=False, err=True)

    def show_secret_once(self, title: str, text: str) -> None:
        self.shown.append({"title": title, "secret": text})
        if not self.quiet and not self.defer_secrets:
            click.echo(f"\n{title}\n\n    {text}\n")

    def reveal_deferred(self) -> None:
        """Show the secrets held back (``defer_secrets``): called once the vault that needs them is written,
        so a recovery key is never shown for a slot that a failed write (a full disk) did not keep."""
        if self.defer_secrets and not self.quiet:
            for item in self.shown:
                click.echo(f"\n{item['title']}\n\n    {item['secret']}\n")
        self.defer_secrets = False


def _device_provider() -> DeviceProvider | None:
    """The device provider of ``tokenagent.discovery`` when the token drivers are installed."""
    try:
        from .. import discovery  # type: ignore[attr-defined]
    except ImportError:
        return None
    factory = getattr(discovery, "default_provider", None)
    return factory() if factory else None


def make_context(
    *,
    password_file: str | None = None,
    pin_file: str | None = None,
    recovery_file: str | None = None,
    otp_secret_file: str | None = None,
    force: bool = False,
    quiet: bool = False,
    options: dict[str, Any] | None = None,
) -> tuple[FactorContext, TerminalInteraction]:
    files = {}
    given = [(k, o, p) for k, o, p in (("password", "--password-file", password_file), ("pin", "--pin-file", pin_file),
                                         ("recovery", "--recovery-file", recovery_file),
                                         ("otp-secret", "--otp-secret-file", otp_secret_file)) if p]
    if sum(p == "-" for _, _, p in given) > 1:
        raise UsageError("only one of --password-file, --pin-file, --recovery-file, --otp-secret-file can read"
                         " standard input")
    for kind, option, path in given:
        files[kind] = SecretLines(option, path)
    ui = TerminalInteraction(files, quiet=quiet)
    command = click.get_current_context(silent=True)
    if command is not None:
        command.call_on_close(ui.wipe)
    ctx = FactorContext(
        ui=ui,
        devices=_device_provider(),
        force=force,
        test_costs=test_costs_allowed(),  # TOKENAGENT_TEST_KDF=1: minimum KDF costs (tests only)
        options=dict(options or {}),
    )
    return ctx, ui
