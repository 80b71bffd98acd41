"""Helpers shared by the command modules: ``--json`` output, warnings, safe text and checked options."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from ..errors import UsageError
from .text import printable

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one JSON object).")

WARNINGS: list[str] = []  # said on stderr during this command; repeated in --json output


def warn(message: str) -> None:
    """One warning line on stderr (also under --json), kept for the JSON answer."""
    if message not in WARNINGS:
        WARNINGS.append(message)
        click.echo(f"tokenagent: warning: {printable(message, keep_newlines=False)}", err=True)


class _Seconds(click.ParamType):
    """--wait SECONDS: a finite number, 0 or more (a negative or NaN wait is a typo, not "forever")."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not 0 <= seconds < float("inf"):
            self.fail(f"{value!r}: the wait is a number of seconds, 0 or more", param, ctx)
        return seconds


wait_seconds = _Seconds()


def refuse_terminal(what: str, instead: str) -> None:
    """Bytes that are a secret (and often binary) are not written to a terminal, as gpg and ykman refuse."""
    if sys.stdout.isatty():
        raise UsageError(f"standard output is a terminal; {what} would be shown on screen: pipe it,"
                         f" or use {instead}")


def emit(as_json: bool, data: dict[str, Any], text: str | Callable[[], None]) -> None:
    """Print ``data`` as JSON, or the human form: a string, or a function that prints it."""
    if as_json:
        extra = {"warnings": list(WARNINGS)} if WARNINGS else {}
        click.echo(json.dumps({"ok": True, **data, **extra}, sort_keys=True))
    elif callable(text):
        text()
    elif text:
        click.echo(printable(text))


SECONDS = wait_seconds  # a finite number of seconds, 0 or more (nan, inf, negative refused)


@contextmanager
def progress(what: str, quiet: bool = False) -> Iterator[None]:
    """Long work on a terminal: "WHAT... 1.4 s" kept up to date, then "WHAT: done in 2.1 s".
    Nothing when standard error is not a terminal (scripts, --json)."""
    stream = sys.stderr
    if quiet or not stream.isatty():
        yield
        return
    start = time.monotonic()
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.25):
            stream.write(f"\r{what}... {time.monotonic() - start:.1f} s")
            stream.flush()

    stream.write(f"{what}...")
    stream.flush()
    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        ticker.join()
        stream.write(f"\r{what}: done in {time.monotonic() - start:.1f} s\n" if ok else "\n")
        stream.flush()
