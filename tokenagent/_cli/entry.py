"""Console-script entry point.

``tokenagent get`` is on the hot path of password commands (restic, borg...), so it is
dispatched before click, cryptography, fido2 or yubikit are imported: its cold start
is a benchmark figure (docs/performance.md).
"""

from __future__ import annotations

import sys

FAST_COMMANDS = ("get",)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in FAST_COMMANDS:
        from ..fastget import main as fast_main

        return fast_main(args[1:])
    from .main import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
