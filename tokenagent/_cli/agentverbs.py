"""The verbs that only talk to the agent (status, lock, events), and the agent itself, without click.

They run on every shell prompt, status bar and completion, so ``entry.py`` dispatches them
here before click, the vault code or any driver is imported (docs/performance.md has the
figures); ``agent`` starts here so that the resident agent never holds the command line's
modules. The click commands of the same names (``_cli/agent.py``) call these functions too,
so there is one implementation of what each verb does and prints. An argument list this
small parser does not take (``--help``, a mistyped option) goes to click, which says what is
wrong.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..client import AgentClient
from ..errors import TokenAgentError, UsageError
from .text import printable


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _answer(as_json: bool, data: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        _out(json.dumps({"ok": True, **data}, sort_keys=True))
    else:
        for line in lines:
            _out(printable(line, keep_newlines=False))


def status(as_json: bool) -> None:
    with AgentClient() as client:
        data = client.status()
    lines = [f"{data['agent']}, pid {data['pid']}, up {data['uptime']:.0f} s"]
    if data.get("get_socket") is False:
        lines.append("  keys are served by the agent socket only: the native get socket is off or not built"
                     " (docs/agent.md)")
    for v in data["vaults"]:
        if v["unlocked"]:
            left = f", locks in {v['idle_left']:.0f} s" if v.get("idle_left") is not None else ""
            lines.append(f"  {v['vault']}: unlocked (slot {v['slot']}, {v['source']}){left}")
        else:
            lines.append(f"  {v['vault']}: locked")
        if v.get("warning"):  # the vault file went backwards, or its backup copy is in use
            lines.append(f"  {v['vault']}: warning: {v['warning']}")
    _answer(as_json, data, lines)


def lock(vault: str | None, all_: bool, as_json: bool) -> None:
    if bool(vault) == all_:
        raise UsageError("name one vault, or give --all")
    with AgentClient() as client:
        if all_:
            locked = client.lock_all()["locked"]
            _answer(as_json, {"locked": locked}, [f"locked: {', '.join(locked) or 'nothing was unlocked'}"])
        else:
            was = client.lock(vault or "")["was_unlocked"]
            _answer(as_json, {"vault": vault, "was_unlocked": was},
                    [f"vault {vault!r} locked" if was else f"vault {vault!r} was not unlocked"])


def events(as_json: bool) -> None:
    client = AgentClient(timeout=None)
    try:
        for event in client.events():
            if as_json:
                _out(json.dumps(event, sort_keys=True))
            else:
                rest = " ".join(f"{k}={v}" for k, v in sorted(event.items()) if k != "event")
                _out(printable(f"{event['event']} {rest}".rstrip(), keep_newlines=False))
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        client.close()


def agent(as_json: bool, socket_file: str | None = None) -> None:
    from ..daemon.server import run_agent

    code = run_agent(socket_file=Path(socket_file) if socket_file else None, json_logs=as_json)
    if code:
        sys.exit(code)


def _parse(verb: str, args: list[str]) -> dict[str, Any] | None:
    """The arguments as keyword arguments of the verb's function, or None for click to handle."""
    as_json = "--json" in args
    rest = [a for a in args if a != "--json"]
    if verb == "agent":
        if not rest:
            return {"as_json": as_json}
        if len(rest) == 2 and rest[0] == "--socket" and not rest[1].startswith("-"):
            return {"as_json": as_json, "socket_file": rest[1]}
        return None
    if verb in ("status", "events"):
        return {"as_json": as_json} if not rest else None
    if verb == "lock":
        if rest == ["--all"]:
            return {"vault": None, "all_": True, "as_json": as_json}
        if len(rest) == 1 and not rest[0].startswith("-"):
            return {"vault": rest[0], "all_": False, "as_json": as_json}
    return None


VERBS: dict[str, Callable[..., None]] = {"status": status, "lock": lock, "events": events, "agent": agent}


def run(args: list[str]) -> int | None:
    """Run ``args`` (verb first) if it is one of ours in a form we take; the exit code, or None."""
    verb = args[0] if args else ""
    kwargs = _parse(verb, args[1:]) if verb in VERBS else None
    if kwargs is None:
        return None
    try:
        VERBS[verb](**kwargs)
    except TokenAgentError as err:
        if kwargs["as_json"]:
            _out(json.dumps({"ok": False, "error": err.code, "message": err.message}))
        else:
            sys.stderr.write(f"tokenagent: {printable(err.message, keep_newlines=False)}\n")
        return int(err.exit_code)
    return 0
