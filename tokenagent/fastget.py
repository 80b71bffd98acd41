"""``tokenagent get``: a key from the agent, for password commands (restic, borg, gocryptfs...).

    tokenagent get VAULT [--context LABEL] [--format raw|hex|base64] [--wait SECONDS] [--json]

Runs before click, cryptography, fido2 or yubikit are imported (see _cli/entry.py): its cold
start is what every backup run pays. Output: the key in the chosen format (default base64)
and a newline (none for raw). On failure one line on stderr and the exit code of
docs/exit-codes.md; with ``--wait`` a locked vault is waited for (plug in the token) up to
SECONDS before failing.
"""

from __future__ import annotations

import base64
import json
import os
import sys

USAGE = "usage: tokenagent get VAULT [--context LABEL] [--format raw|hex|base64] [--wait SECONDS] [--json]"
HELP = f"""{USAGE}

  Print a key of VAULT from the running agent: the subkey for LABEL (--context), or the
  vault's secret itself where the vault allows it (an imported secret).

Options:
  --context LABEL     the subkey for LABEL (HKDF of the vault's key; one per tool and repository)
  --format FORMAT     raw (the bytes, never to a terminal), hex or base64 (default)
  --wait SECONDS      wait this long for a locked vault to be unlocked (plug in its token)
  --json              one JSON object on standard output, errors too
  -h, --help          show this help

Exit codes: docs/exit-codes.md (7: the vault is locked; 3: no such vault)."""
FORMATS = ("raw", "hex", "base64")


class _Help(Exception):
    """-h/--help: print HELP and exit 0."""


def _parse(args: list[str]) -> dict[str, object]:
    opts: dict[str, object] = {"format": "base64", "context": None, "wait": None, "json": False, "vault": None}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=")
        if name in ("--context", "--format", "--wait"):
            if eq:
                value = inline
            elif i + 1 < len(args):
                i += 1
                value = args[i]
            else:
                raise ValueError(f"{name} needs a value")
            opts[name[2:]] = value
        elif arg == "--json":
            opts["json"] = True
        elif arg in ("-h", "--help"):
            raise _Help
        elif arg.startswith("-"):
            raise ValueError(f"unknown option {arg}")
        elif opts["vault"] is None:
            opts["vault"] = arg
        else:
            raise ValueError(f"unexpected argument {arg!r}")
        i += 1
    if opts["vault"] is None:
        raise ValueError("name the vault")
    if opts["format"] not in FORMATS:
        raise ValueError("--format is raw, hex or base64")
    if opts["wait"] is not None:
        try:
            wait = float(str(opts["wait"]))
        except ValueError:
            raise ValueError("--wait takes a number of seconds") from None
        if not 0 <= wait < float("inf"):
            raise ValueError("--wait takes a number of seconds, 0 or more")
        opts["wait"] = wait
    return opts


def main(args: list[str]) -> int:
    from .errors import ExitCode, TokenAgentError

    try:
        opts = _parse(args)
    except _Help:
        print(HELP)
        return 0
    except ValueError as err:
        print(f"tokenagent: {err}\n{USAGE}", file=sys.stderr)
        return int(ExitCode.USAGE)
    as_json = bool(opts["json"])
    if opts["format"] == "raw" and not as_json and os.isatty(sys.stdout.fileno()):
        print("tokenagent: standard output is a terminal; the raw key would be shown on screen: pipe it"
              " (e.g. | cryptsetup ... --key-file=-), or use --format base64", file=sys.stderr)
        return int(ExitCode.USAGE)
    try:
        from .client import AgentClient

        agent = AgentClient()  # connects on first use: a get-socket get needs no hello
        try:
            key = agent.get(str(opts["vault"]), opts["context"] and str(opts["context"]),  # type: ignore[arg-type]
                            opts["wait"])  # type: ignore[arg-type]
        finally:
            agent.close()
    except TokenAgentError as err:
        if as_json:
            print(json.dumps({"ok": False, "error": err.code, "message": err.message}))
        else:
            print(f"tokenagent: {err.message}", file=sys.stderr)
        return int(err.exit_code)
    except OSError as err:
        print(f"tokenagent: cannot reach the agent: {err.strerror or err}", file=sys.stderr)
        return int(ExitCode.AGENT)
    try:
        fmt = opts["format"]
        if as_json:
            text = key.hex() if fmt == "hex" else base64.b64encode(bytes(key)).decode()
            print(json.dumps({"ok": True, "vault": opts["vault"], "format": "hex" if fmt == "hex" else "base64",
                              "key": text}))
        elif fmt == "raw":
            os.write(sys.stdout.fileno(), bytes(key))
        else:
            sys.stdout.write((key.hex() if fmt == "hex" else base64.b64encode(bytes(key)).decode()) + "\n")
            sys.stdout.flush()
    finally:
        for i in range(len(key)):
            key[i] = 0
    return 0
