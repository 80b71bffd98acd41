"""The click command group and the translation of errors to one-line messages and exit codes.

Each module in this package that defines ``register(cli)`` adds its commands; modules
are imported in name order, so adding a command never means editing this file.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys

import click

from .. import __version__
from ..errors import ExitCode, StorageError, TokenAgentError
from ..plugins import load_factor_types
from ..vault.format import Vault
from ..vault.store import VaultStore
from .util import WARNINGS, printable, warn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tokenagent")
def cli() -> None:
    """tokenagent: keep vault keys behind hardware tokens, and serve them to local clients.

    Exit codes: 0 ok, 1 failure, 2 usage, 3 vault, 4 authentication, 5 token,
    6 agent, 7 locked, 8 denied by policy, 9 cancelled, 10 token not plugged in
    (docs/exit-codes.md).
    """
    load_factor_types()  # before any vault is read, so its token factors are known


def _load_commands() -> None:
    package = importlib.import_module(__package__ or "tokenagent._cli")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in ("main", "entry", "util"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(cli)
    from .completion import complete_vault_names

    complete_vault_names(cli)  # once every command is there


def _wants_json(args: list[str]) -> bool:
    return "--json" in args[: args.index("--")] if "--" in args else "--json" in args


def _announce_fallback(vault: Vault) -> None:
    warn(f"vault {vault.name!r}: the main file is damaged ({vault.damage}); using the backup copy"
         f" (seq {vault.seq}: changes made after it are missing). Nothing is written to this vault until"
         f" you run 'tokenagent repair {vault.name}'")


_STORAGE_ERRNOS = {"ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EIO"}


def run(args: list[str]) -> int:
    """Run the CLI; return the exit code. Errors become one line on stderr (or a JSON object).

    Bugs (any other exception) are left to the boundary in ``entry.main``.
    """
    import errno

    _load_commands()
    WARNINGS.clear()
    if _announce_fallback not in VaultStore.fallback_listeners:
        VaultStore.fallback_listeners.append(_announce_fallback)
    try:
        result = cli.main(args=args, prog_name="tokenagent", standalone_mode=False)
    except TokenAgentError as err:
        _report(args, err.code, err.message)
        return int(err.exit_code)
    except click.exceptions.Abort:
        _report(args, "cancelled", "cancelled")
        return int(ExitCode.CANCELLED)
    except click.ClickException as err:
        if _wants_json(args):
            _report(args, "usage", err.format_message())
        else:
            err.show()
        return int(ExitCode.USAGE) if err.exit_code == 2 else err.exit_code
    except KeyboardInterrupt:
        _report(args, "cancelled", "interrupted")
        return int(ExitCode.CANCELLED)
    except OSError as err:  # one that no layer translated: say which file and what failed
        from .output import OutputError

        if isinstance(err, OutputError):
            raise  # standard output: the boundary says so
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        if errno.errorcode.get(err.errno or 0) in _STORAGE_ERRNOS:
            storage = StorageError.from_os(err, f"cannot complete the command{where}")
            _report(args, storage.code, storage.message)
            return int(storage.exit_code)
        _report(args, "error", f"{err.strerror or type(err).__name__}{where}")
        return int(ExitCode.FAILURE)
    return int(result) if isinstance(result, int) else 0


def _report(args: list[str], code: str, message: str) -> None:
    if _wants_json(args):
        extra = {"warnings": list(WARNINGS)} if WARNINGS else {}
        click.echo(json.dumps({"ok": False, "error": code, "message": message, **extra}))
    else:
        click.echo(f"tokenagent: {printable(message, keep_newlines=False)}", err=True)


def main() -> None:
    from .entry import main as entry_main

    sys.exit(entry_main(sys.argv[1:]))
