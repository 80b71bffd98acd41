"""Console-script entry point, and the last boundary: no command ever ends in a traceback.

``tokenagent get`` is on the hot path of password commands (restic, borg...), so it is
dispatched before click, cryptography, fido2 or yubikit are imported: its cold start
is a benchmark figure (docs/performance.md). ``status``, ``lock`` and ``events`` only talk to
the agent and run on every prompt or status-bar refresh, ``list`` and the shell completion of a
vault name (no arguments, ``_TOKENAGENT_COMPLETE`` set) on every TAB: they too skip click
(agentverbs.py).

Our errors become one line and an exit code in ``main.run`` (``fastget.main`` for get). What
reaches this boundary is a bug: it prints one line naming the exception's type only (its
message could hold data from a vault or a secret) with what to do, and exits 1;
``TOKENAGENT_DEBUG=1`` prints the traceback as well, for the report.
"""

import os  # no "from __future__ import annotations": it would import __future__ on get's path
import sys

FAST_COMMANDS = ("get",)
AGENT_VERBS = ("status", "lock", "events", "agent", "list")
ENV_DEBUG = "TOKENAGENT_DEBUG"


def _dispatch(args: list[str]) -> int:
    if args and args[0] in FAST_COMMANDS:
        from ..fastget import main as fast_main

        return fast_main(args[1:])
    if not args or args[0] in AGENT_VERBS:  # the agent, verbs that only talk to it, completion: no click
        from .agentverbs import run as run_verb

        code = run_verb(args)
        if code is not None:
            return code
    from .main import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        code = _dispatch(args)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        _line("tokenagent: interrupted")
        return 9
    except OSError as err:
        from .output import OutputError, output_failed

        return output_failed(err) if isinstance(err, OutputError) else _bug(err)
    except BaseException as err:  # noqa: BLE001 - the boundary: a bug, said in one line
        return _bug(err)
    if argv is None and args and args[0] in FAST_COMMANDS:  # the console script's get: no interpreter teardown
        _exit_now(code)
    return code


def _bug(err: BaseException) -> int:
    if os.environ.get(ENV_DEBUG) == "1":
        import traceback

        traceback.print_exception(err)
    _line(f"tokenagent: internal error ({type(err).__name__}); nothing more is shown because it could hold"
          f" secrets. This is a bug: please report it, with the traceback {ENV_DEBUG}=1 prints")
    return 1


def _exit_now(code: int) -> None:
    """End the process as the interpreter's own exit would (streams flushed, 120 when standard
    output cannot be), without its teardown of every module and object: about 2 ms, half of what
    ``tokenagent get`` costs above ``python -c pass`` (docs/performance.md). Only for a process
    whose work is done and that registered no exit handler: get, which has wiped its key by now."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            if stream is sys.stdout and code == 0:
                code = 120
    os._exit(code)


def _line(text: str) -> None:
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
