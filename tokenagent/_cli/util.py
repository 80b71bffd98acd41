"""Helpers shared by the command modules: ``--json`` output and secret input."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one JSON object).")


def emit(as_json: bool, data: dict[str, Any], text: str | Callable[[], None]) -> None:
    """Print ``data`` as JSON, or the human form: a string, or a function that prints it."""
    if as_json:
        click.echo(json.dumps({"ok": True, **data}, sort_keys=True))
    elif callable(text):
        text()
    elif text:
        click.echo(text)
