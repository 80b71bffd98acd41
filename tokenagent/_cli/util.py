"""Helpers shared by the command modules: ``--json`` output and secret input."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one JSON object).")


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
        click.echo(json.dumps({"ok": True, **data}, sort_keys=True))
    elif callable(text):
        text()
    elif text:
        click.echo(text)
