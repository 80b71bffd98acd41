"""``tokenagent audit``: read the agent's audit log (docs/agent.md, "The audit log").

    tokenagent audit [--vault NAME] [--program NAME] [--since WHEN] [--until WHEN]
                     [--refused | --released] [--last N] [--json]

Reads ``DATA/audit.log`` and its rotated files, oldest first, without the agent.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
import time
import unicodedata
from typing import Any

import click

from .. import paths
from ..daemon.audit import read_records
from ..errors import UsageError
from .util import json_option

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(text: str, now: float | None = None) -> float:
    """Unix seconds from an age (``90s``, ``15m``, ``2h``, ``7d``), an ISO date or time (local time
    unless it says otherwise), or Unix seconds."""
    now = time.time() if now is None else now
    age = _AGE.match(text.strip())
    if age:
        return now - float(age.group(1)) * _UNITS[age.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(f"cannot read the time {text!r}: give an ISO date or time (2026-12-01T08:00) or an age"
                         " (90s, 15m, 2h, 7d)") from None


def _program_matches(record: dict[str, Any], program: str) -> bool:
    for exe in (record.get("exe"), record.get("parent_exe")):
        if not isinstance(exe, str):
            continue
        if exe == program or ("/" not in program and os.path.basename(exe) == program):
            return True
    return False


def select(records: Any, vault: str | None = None, program: str | None = None, since: float | None = None,
           until: float | None = None, outcome: bool | None = None) -> tuple[list[dict[str, Any]], int]:
    """The records that pass the filters, and the number of lines that were not records."""
    chosen, unreadable = [], 0
    for record in records:
        if "unreadable" in record:
            unreadable += 1
            continue
        when = record.get("time")
        if vault is not None and record.get("vault") != vault:
            continue
        if program is not None and not _program_matches(record, program):
            continue
        if since is not None and not (isinstance(when, int | float) and when >= since):
            continue
        if until is not None and not (isinstance(when, int | float) and when <= until):
            continue
        if outcome is not None and bool(record.get("ok")) != outcome:
            continue
        chosen.append(record)
    return chosen, unreadable


def _safe(value: object) -> str:
    """For the terminal: control characters (a client chose the context) shown escaped."""
    text = str(value)
    return "".join(c if unicodedata.category(c)[0] != "C" else repr(c)[1:-1] for c in text)


def _row(record: dict[str, Any]) -> str:
    when = record.get("time")
    stamp = (datetime.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")
             if isinstance(when, int | float) else "?")
    outcome = "released" if record.get("ok") else f"refused ({_safe(record.get('error'))})"
    context = record.get("context")
    if record.get("op", "get") != "get":  # a signature of the ssh socket, say
        label = f"{_safe(record.get('op'))} {_safe(record.get('key', ''))}".strip()
    else:
        label = "raw" if context is None else f"context {_safe(context)}"
    program = _safe(record.get("exe") or "?")
    parent = record.get("parent_exe")
    return (f"{stamp}  {_safe(record.get('vault'))}  {outcome}  {label}  {program}"
            f"{'' if parent is None else ' run by ' + _safe(parent)}  pid {record.get('pid')} uid {record.get('uid')}")


@click.command()
@click.option("--vault", metavar="NAME", help="Only this vault.")
@click.option("--program", metavar="NAME", help="Only gets by this program (a path, or a file name), or run by it.")
@click.option("--since", metavar="WHEN", help="From this time: ISO date or time, or an age (90s, 15m, 2h, 7d).")
@click.option("--until", metavar="WHEN", help="Up to this time (as --since).")
@click.option("--refused", "outcome", flag_value="refused", help="Only refusals.")
@click.option("--released", "outcome", flag_value="released", help="Only releases.")
@click.option("--last", type=click.IntRange(min=1), metavar="N", help="Only the last N matching lines.")
@json_option
def audit(vault: str | None, program: str | None, since: str | None, until: str | None, outcome: str | None,
          last: int | None, as_json: bool) -> None:
    """Show the audit log: every key request the agent released or refused."""
    path = paths.data_dir() / "audit.log"
    records, unreadable = select(
        read_records(path), vault, program, parse_when(since) if since else None,
        parse_when(until) if until else None, None if outcome is None else outcome == "released")
    if last is not None:
        records = records[-last:]
    if unreadable:
        click.echo(f"tokenagent: {unreadable} line(s) of {path} are not audit records (damaged?); skipped",
                   err=True)
    if as_json:
        click.echo(json.dumps({"ok": True, "log": str(path), "records": records, "unreadable": unreadable},
                              sort_keys=True))
        return
    if not records:
        click.echo("no matching audit lines" if path.exists() else f"no audit log yet ({path})", err=True)
        return
    out = sys.stdout
    for record in records:
        out.write(_row(record) + "\n")
    out.flush()


def register(cli: click.Group) -> None:
    cli.add_command(audit)
