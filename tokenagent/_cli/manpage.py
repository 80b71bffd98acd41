"""``tokenagent man``: the manual page, built from the command line's own help.

Every command, its usage line, its help and its options come from the click definitions
that parse them, so the page cannot drift from the program. Read it with
``tokenagent man | man -l -``, or install it where man finds it:

    tokenagent man > ~/.local/share/man/man1/tokenagent.1
"""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Iterator

import click

from .. import __version__
from .util import emit, json_option

SEE_ALSO = ("docs/admin.md, docs/agent.md, docs/integrations.md, docs/exit-codes.md, docs/spec/vault.md and "
            "docs/spec/protocol.md in the tokenagent source; pinentry(1), systemd.socket(5)")


def roff_escape(text: str) -> str:
    """Text as roff shows it literally: backslashes and hyphens escaped, no line starting with a control."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines())


def _commands(group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], click.Command, click.Context]]:
    for name in sorted(group.commands):
        command = group.commands[name]
        if command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        yield (*path, name), command, sub
        if isinstance(command, click.Group):
            yield from _commands(command, sub, (*path, name))


def _paragraphs(text: str) -> list[str]:
    """click's help text as roff paragraphs (``\\b`` marks a block kept as it is written)."""
    out = []
    for block in inspect.cleandoc(text).split("\n\n"):
        if block.startswith("\b\n"):
            out.append(".nf\n" + roff_escape(block[2:]) + "\n.fi")
        else:
            out.append(roff_escape(" ".join(line.strip() for line in block.splitlines())))
    return out


def render(cli: click.Group) -> str:
    ctx = click.Context(cli, info_name="tokenagent")
    date = datetime.date.today().strftime("%Y-%m-%d")
    lines = [f'.TH TOKENAGENT 1 "{date}" "tokenagent {__version__}" "User Commands"',
             ".SH NAME", "tokenagent \\- keep vault keys behind hardware tokens, and serve them to local clients",
             ".SH SYNOPSIS", ".B tokenagent", "\\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGUMENTS\\fR]",
             ".SH DESCRIPTION"]
    lines += [p + "\n.PP" for p in _paragraphs(cli.help or "")]
    lines.append(".SH COMMANDS")
    for path, command, sub in _commands(cli, ctx):
        usage = " ".join(command.collect_usage_pieces(sub))
        lines += [".SS " + roff_escape(" ".join(("tokenagent", *path))),
                  ".B " + roff_escape(" ".join(("tokenagent", *path))), roff_escape(usage), ".PP"]
        lines += [p + "\n.PP" for p in _paragraphs(command.help or "")]
        for param in command.get_params(sub):
            record = param.get_help_record(sub) if isinstance(param, click.Option) else None
            if record is None:
                continue
            names, help_text = record
            lines += [".TP", "\\fB" + roff_escape(names) + "\\fR", roff_escape(help_text or "")]
    lines += [".SH EXIT STATUS", "See docs/exit-codes.md; \\fBtokenagent \\-\\-help\\fR lists them.",
              ".SH ENVIRONMENT", ".TP", "\\fBTOKENAGENT_HOME\\fR",
              "Put all state (vaults, configuration, the agent's socket) under this directory.",
              ".TP", "\\fBTOKENAGENT_SOCKET\\fR", "The agent's socket, instead of $XDG_RUNTIME_DIR/tokenagent/agent.sock.",
              ".SH SEE ALSO", roff_escape(SEE_ALSO)]
    return "\n".join(lines) + "\n"


def register(cli: click.Group) -> None:
    @cli.command()
    @json_option
    def man(as_json: bool) -> None:
        """Print the manual page (roff), built from this help: 'tokenagent man | man -l -'."""
        page = render(cli)
        emit(as_json, {"page": page}, lambda: click.echo(page, nl=False))
