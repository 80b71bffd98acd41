"""``tokenagent get``: a key from the agent, for password commands (restic, borg, gocryptfs...).

    tokenagent get VAULT [--context LABEL] [--format raw|text|hex|base64] [--wait SECONDS] [--json]

Runs before click, cryptography, fido2 or yubikit are imported (see _cli/entry.py): its cold
start is what every backup run pays. Output: the key in the chosen format and a newline (none
for raw). Without --format, an imported secret (``init --import-secret``) is printed as it
came: its bytes and a newline when it is one line of text (what restic, borg and gocryptfs
read from a password command), its exact bytes otherwise; the agent socket's answer says
whether a secret was imported, so that case skips the get socket. Any other key is base64.
Binary output (raw) is never written to a terminal. On failure one line on stderr and the exit
code of docs/exit-codes.md; with ``--wait`` a locked vault is waited for (plug in the token)
up to SECONDS before failing.

What the get socket's path imports is kept to ``_socket``, ``resource`` and this package's
``_locations`` and ``getwire``: no ``binascii`` (its shared object loads libz; ``_b64`` writes the
key's base64), no ``struct``, and no ``from __future__ import annotations`` (it imports the
``__future__`` module; the annotations here are valid at run time). docs/performance.md has the
figures."""

import os
import sys

# Exit codes (docs/exit-codes.md; tokenagent.errors.ExitCode, which a test holds these to): the
# success path does not import the error tree.
EXIT_USAGE = 2
EXIT_AGENT = 6

USAGE = "usage: tokenagent get VAULT [--context LABEL] [--format raw|text|hex|base64] [--wait SECONDS] [--json]"
HELP = f"""{USAGE}

  Print a key of VAULT from the running agent: the subkey for LABEL (--context), or the
  vault's secret itself where the vault allows it (an imported secret).

Options:
  --context LABEL     the subkey for LABEL (HKDF of the vault's key; one per tool and repository)
  --format FORMAT     raw (the bytes, never to a terminal), text (the bytes and a newline), hex,
                      or base64; default: an imported secret as it came (text when it is one
                      line of text, else raw), any other key in base64
  --wait SECONDS      wait this long for a locked vault to be unlocked (plug in its token)
  --json              one JSON object on standard output, errors too
  -h, --help          show this help

Exit codes: docs/exit-codes.md (7: the vault is locked; 3: no such vault)."""
FORMATS = ("raw", "text", "hex", "base64")
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


class _Help(Exception):
    """-h/--help: print HELP and exit 0."""


def _parse(args: list[str]) -> dict[str, object]:
    opts: dict[str, object] = {"format": None, "context": None, "wait": None, "json": False, "vault": None}
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
    if opts["context"] == "":
        raise ValueError("--context needs a label (an empty one is refused: leave --context out for the key itself)")
    if opts["format"] is not None and opts["format"] not in FORMATS:
        raise ValueError("--format is raw, text, hex or base64")
    if opts["wait"] is not None:
        try:
            wait = float(str(opts["wait"]))
        except ValueError:
            raise ValueError("--wait takes a number of seconds") from None
        if not 0 <= wait < float("inf"):
            raise ValueError("--wait takes a number of seconds, 0 or more")
        opts["wait"] = wait
    return opts


def fetch(vault: str, context: str | None, wait: float | None, as_stored: bool) -> tuple[bytearray, bool]:
    """The key, and whether it is an imported secret. ``as_stored`` (no --format, no --context)
    asks the agent socket, whose answer says so; otherwise the get socket answers (when there is one)."""
    if not as_stored and not wait:
        key = from_get_socket(vault, context)
        if key is not None:
            return key, False
    from .client import AgentClient

    agent = AgentClient()  # the agent socket: it answers, refuses with its message, or waits
    try:
        args: dict[str, object] = {"vault": vault}
        if context:
            args["context"] = context
        if wait:
            args["wait"] = wait
            args["progress"] = True  # the agent says at once what the wait is for
            agent.on_event = _say_waiting
        data = agent.request("get", timeout=(wait or 0) + 30.0, **args)
        import binascii

        return bytearray(binascii.a2b_base64(data["key"])), data.get("imported") is True
    finally:
        agent.close()


def from_get_socket(vault: str, context: str | None) -> bytearray | None:
    """The key in one round trip on the get socket (no hello, no JSON, no socket module); None when
    the agent socket must answer (no get socket, a refusal, a name the binary form cannot carry).
    The listener is checked as on every connection (``_locations.connect``: us or root)."""
    from . import _locations
    from .getwire import HEADER_SIZE, decode_get_answer, encode_get

    request = encode_get(vault, context)
    if request is None:
        return None
    path = _locations.get_socket(_locations.agent_socket())
    try:
        sock = _locations.connect(path, 30.0, lean=True)
    except Exception as err:
        from .errors import UnsafePath

        if isinstance(err, UnsafePath):
            raise  # someone else's socket or directory: said, never worked around
        return None  # no get socket (an agent without it, or none: the agent socket says which)
    try:
        sock.sendall(request)
        header = _recv_exactly(sock, HEADER_SIZE)
        body = _recv_exactly(sock, int.from_bytes(header, "big")) if header is not None else None
    except OSError:
        body = None
    finally:
        sock.close()
    if body is None:
        return None
    key, _code, _message = decode_get_answer(body)
    body[:] = bytes(len(body))
    return key


def _recv_exactly(sock: object, n: int) -> bytearray | None:
    data = bytearray(n)
    view, got = memoryview(data), 0
    while got < n:
        count = sock.recv_into(view[got:])  # type: ignore[attr-defined]
        if not count:
            return None
        got += count
    return data


def _say_waiting(event: dict[str, object]) -> None:
    if event.get("event") == "waiting":
        why = str(event.get("message") or f"vault {event.get('vault')!r} is locked")
        print(f"tokenagent: {why}; waiting up to {float(str(event.get('seconds') or 0)):.0f} s", file=sys.stderr,
              flush=True)


def as_imported(key: bytes | bytearray) -> str:
    """How an imported secret is printed: "text" (its bytes and a newline, what password commands
    read) when it is one line of text, else "raw" (its bytes exactly)."""
    body = bytes(key[:-1]) if key.endswith(b"\n") else bytes(key)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "raw"
    return "text" if text and text.isprintable() else "raw"


def _b64(key: bytearray) -> bytearray:
    """The standard base64 of ``key`` (RFC 4648, with padding), in a buffer the caller wipes.

    Written here rather than taken from binascii, whose shared object (and the libz it links)
    every get would load for this alone; tests hold it to binascii.b2a_base64."""
    out = bytearray()
    full = len(key) - len(key) % 3
    for i in range(0, full, 3):
        n = int.from_bytes(key[i:i + 3], "big")
        out += bytes((_B64[n >> 18], _B64[n >> 12 & 63], _B64[n >> 6 & 63], _B64[n & 63]))
    rest = len(key) - full
    if rest:
        n = int.from_bytes(key[full:] + bytes(3 - rest), "big")
        out += bytes((_B64[n >> 18], _B64[n >> 12 & 63], _B64[n >> 6 & 63] if rest == 2 else 61, 61))
    return out


def _write(key: bytearray, fmt: str) -> None:
    if fmt in ("raw", "text"):
        data = bytearray(key)
        if fmt == "text" and not key.endswith(b"\n"):
            data += b"\n"
    else:
        data = bytearray(key.hex(), "ascii") if fmt == "hex" else _b64(key)
        data += b"\n"
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(sys.stdout.fileno(), view):]
    finally:
        data[:] = bytes(len(data))


def _refuse_terminal(what: str) -> str:
    return (f"tokenagent: standard output is a terminal; {what} would be shown on screen: pipe it"
            " (e.g. | cryptsetup ... --key-file=-), or use --format base64")


def _no_core_dumps(piped: bool | None = None) -> None:
    """Before a key is read into this process: no core file of it, even where cores are enabled.

    RLIMIT_CORE 0 stops the kernel writing a core file. A core_pattern that pipes to a program
    (systemd-coredump, apport) is not bound by that limit in the kernel, so there the process is
    also made non-dumpable (prctl PR_SET_DUMPABLE 0, which ctypes costs ~2 ms to reach: paid only then).
    """
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError):
        pass
    if piped is None:
        try:
            fd = os.open("/proc/sys/kernel/core_pattern", os.O_RDONLY | os.O_CLOEXEC)
            try:
                piped = os.read(fd, 1) == b"|"
            finally:
                os.close(fd)
        except OSError:
            piped = True
    if piped:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
        except (OSError, AttributeError):
            pass


def _errors() -> type[BaseException]:
    """The error tree's root, imported only once something went wrong (an ``except`` clause's
    expression is evaluated only then)."""
    from .errors import TokenAgentError

    return TokenAgentError


def main(args: list[str]) -> int:
    try:
        opts = _parse(args)
    except _Help:
        print(HELP)
        return 0
    except ValueError as err:
        print(f"tokenagent: {err}\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    as_json = bool(opts["json"])
    _no_core_dumps()
    fmt = opts["format"]
    context = str(opts["context"]) if opts["context"] else None
    if fmt == "raw" and not as_json and os.isatty(sys.stdout.fileno()):
        print(_refuse_terminal("the raw key"), file=sys.stderr)
        return EXIT_USAGE
    try:
        key, imported = fetch(str(opts["vault"]), context, opts["wait"], fmt is None and context is None)  # type: ignore[arg-type]
    except _errors() as err:
        if as_json:
            import json

            print(json.dumps({"ok": False, "error": err.code, "message": err.message}))  # type: ignore[attr-defined]
        else:
            print(f"tokenagent: {err.message}", file=sys.stderr)  # type: ignore[attr-defined]
        return int(err.exit_code)  # type: ignore[attr-defined]
    except OSError as err:
        print(f"tokenagent: cannot reach the agent: {err.strerror or err}", file=sys.stderr)
        return EXIT_AGENT
    try:
        if fmt is None:
            fmt = as_imported(key) if imported else "base64"
        if as_json:
            import json

            text = key.hex() if fmt == "hex" else _b64(key).decode()
            answer: dict[str, object] = {"ok": True, "vault": opts["vault"], "key": text,
                                         "format": "hex" if fmt == "hex" else "base64"}
            if imported:
                answer["imported"] = True
            print(json.dumps(answer))
            sys.stdout.flush()
        elif fmt == "raw" and os.isatty(sys.stdout.fileno()):
            print(_refuse_terminal(f"the secret of vault {opts['vault']!r} is binary and"), file=sys.stderr)
            return EXIT_USAGE
        else:
            _write(key, fmt)  # type: ignore[arg-type]
    except OSError as err:  # standard output: the key could not be handed over
        from ._cli.output import output_failed

        return output_failed(err)
    finally:
        for i in range(len(key)):
            key[i] = 0
    return 0
