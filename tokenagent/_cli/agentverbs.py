"""The verbs that only talk to the agent (status, lock, events) or read vault names (list, the
shell completion of a vault name), and the agent itself, without click.

They run on every shell prompt, status bar and TAB, so ``entry.py`` dispatches them here before
click, pathlib, the vault code or any driver is imported, and what they import stays lean too:
the client on ``_socket``, JSON from ``wirejson``, the error tree only when something failed
(docs/performance.md has the figures). ``agent`` starts here so that the resident agent never
holds the command line's modules. The click commands of the same names (``_cli/agent.py``) call
these functions too, so there is one implementation of what each verb does and prints (``list``
and click's ``list`` read the names with the same ``_locations.vault_names``). An argument list this small parser does not take (``--help``, a mistyped option)
goes to click, which says what is wrong; so does a ``list`` or a completion that meets anything
unusual (an error, a name that is not plain ASCII): click's path gives the same answer, slower.
"""

from __future__ import annotations

import os
import sys

from .. import _locations, wirejson
from ..client import AgentClient
from .text import printable

TYPE_CHECKING = False  # typing, pathlib and collections.abc stay unimported (the verbs' start)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def _out(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
    except OSError as err:
        from .output import stdout_error

        raise stdout_error(err) from None


def _flush() -> None:
    """What the verb wrote, out now: a failure is standard output's (output.py), said by the boundary."""
    try:
        sys.stdout.flush()
    except OSError as err:
        from .output import stdout_error

        raise stdout_error(err) from None


def _answer(as_json: bool, data: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        _out(wirejson.dumps({"ok": True, **data}, sort_keys=True))
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
        from ..errors import UsageError

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
                _out(wirejson.dumps(event, sort_keys=True))
            else:
                rest = " ".join(f"{k}={v}" for k, v in sorted(event.items()) if k != "event")
                _out(printable(f"{event['event']} {rest}".rstrip(), keep_newlines=False))
            _flush()
    except KeyboardInterrupt:
        pass
    finally:
        client.close()


def vault_names() -> list[str]:
    """The vaults present, from their file names (the vault directory is made private if missing, as
    every command that reads it does)."""
    return _locations.vault_names(_locations.vault_dir())


def list_vaults(as_json: bool) -> None:
    """``tokenagent list``: the vault names, one a line (none: nothing), or ``{"ok": true, "vaults": [...]}``."""
    names = vault_names()
    if as_json:
        _out(wirejson.dumps({"ok": True, "vaults": names}, sort_keys=True))
    elif names:
        _out(printable("\n".join(names)))


def _quick_list(as_json: bool) -> None:
    """``list`` without click, or _Fallback for anything unusual (click's path says it as it always has)."""
    try:
        names = vault_names()
    except Exception:  # noqa: BLE001 - not an answer here: the full CLI runs the same code and reports it
        raise _Fallback from None
    if not all(_plain(n) for n in names):
        raise _Fallback
    list_vaults(as_json)


# --- shell completion (``_cli/completion.py`` has click's side) --------------------------------------------

COMPLETE_VAR = "_TOKENAGENT_COMPLETE"
# The commands whose first argument is a vault name (completion.complete_vault_names gives click's the
# same completion; tests/core/test_completion_and_man.py holds this list to click's commands).
VAULT_FIRST = frozenset({
    "delete", "drill", "enroll", "exec", "info", "init", "lock", "open", "passwd", "relabel", "remove-slot", "rename",
    "repair", "rotate", "set", "slots", "unlock",
})
_FORMATS = {  # click.shell_completion's format_completion of a plain item without help, per shell
    "bash_complete": "plain,{}",
    "zsh_complete": "plain\n{}\n_",
    "fish_complete": "plain,{}",
}


class _Fallback(Exception):
    """This case is click's to answer."""


def _plain(word: str) -> bool:
    """Printable ASCII, no quote or backslash: shlex (click's split_arg_string) keeps it as it is."""
    return all(" " < c <= "~" and c not in "'\"\\" for c in word)


def _completion_words(instruction: str) -> tuple[list[str], str]:
    """(complete words after the program name, the incomplete word), as click's shell classes read them."""
    line = os.environ.get("COMP_WORDS", "")
    if any(c not in " \t\n\r" and not _plain(c) for c in line):
        raise _Fallback
    words = line.split()
    if instruction == "fish_complete":
        incomplete = os.environ.get("COMP_CWORD", "")
        if any(c not in " \t\n\r" and not _plain(c) for c in incomplete):
            raise _Fallback
        incomplete = (incomplete.split() or [""])[0]
        args = words[1:]
        if incomplete and args and args[-1] == incomplete:
            args.pop()
        return args, incomplete
    try:
        cword = int(os.environ.get("COMP_CWORD", ""))
    except ValueError:
        raise _Fallback from None
    if cword < 1:
        raise _Fallback
    return words[1:cword], words[cword] if cword < len(words) else ""


def complete(instruction: str) -> None:
    """One TAB: the vault names after a command whose first argument is one; _Fallback otherwise
    (command names, options, other arguments: click's tree knows them)."""
    form = _FORMATS.get(instruction)
    if form is None:
        raise _Fallback
    args, incomplete = _completion_words(instruction)
    if len(args) != 1 or args[0] not in VAULT_FIRST or incomplete.startswith("-") or "=" in incomplete:
        raise _Fallback
    try:
        names = vault_names()
    except Exception:  # noqa: BLE001 - not an answer here: click's completion runs the same code and decides
        raise _Fallback from None
    if not all(_plain(n) for n in names):
        raise _Fallback
    items = [form.format(n) for n in names if n.startswith(incomplete)]
    _out("\n".join(items))


def agent(as_json: bool, socket_file: str | None = None) -> None:
    from pathlib import Path

    from ..daemon.resources import asyncio_without_tls

    asyncio_without_tls()  # before the daemon imports asyncio: no TLS support loaded (daemon/resources.py)
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
    if verb in ("status", "events", "list"):
        return {"as_json": as_json} if not rest else None
    if verb == "lock":
        if rest == ["--all"]:
            return {"vault": None, "all_": True, "as_json": as_json}
        if len(rest) == 1 and not rest[0].startswith("-"):
            return {"vault": rest[0], "all_": False, "as_json": as_json}
    return None


VERBS: dict[str, Callable[..., None]] = {"status": status, "lock": lock, "events": events, "agent": agent,
                                         "list": _quick_list}


def run(args: list[str]) -> int | None:
    """Run ``args`` (verb first) if it is one of ours in a form we take; the exit code, or None.
    No arguments and ``_TOKENAGENT_COMPLETE`` set: a shell's completion request (click's protocol)."""
    if not args:
        instruction = os.environ.get(COMPLETE_VAR)
        if not instruction:
            return None
        try:
            complete(instruction)
        except _Fallback:
            return None
        _flush()
        return 0
    verb = args[0]
    kwargs = _parse(verb, args[1:]) if verb in VERBS else None
    if kwargs is None:
        return None
    code = 0
    try:
        VERBS[verb](**kwargs)
    except _Fallback:
        return None
    except _tree().TokenAgentError as err:  # evaluated only when something was raised: the tree stays unimported
        if kwargs["as_json"]:
            _out(wirejson.dumps({"ok": False, "error": err.code, "message": err.message}))
        else:
            sys.stderr.write(f"tokenagent: {printable(err.message, keep_newlines=False)}\n")
        code = int(err.exit_code)
    _flush()
    return code


def _tree() -> Any:
    from .. import errors

    return errors
