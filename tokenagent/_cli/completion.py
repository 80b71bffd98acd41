"""``tokenagent completion SHELL``: shell completion for bash, zsh and fish, vault names included.

The script printed is click's for that shell: at each TAB the shell runs ``tokenagent`` with
``_TOKENAGENT_COMPLETE`` set, and click answers with the commands, options and values that fit.
Arguments that name a vault complete from the vault files present (file names only: no vault
is read or opened to complete).

    tokenagent completion bash > ~/.local/share/bash-completion/completions/tokenagent
    tokenagent completion zsh > "${fpath[1]}/_tokenagent"
    tokenagent completion fish > ~/.config/fish/completions/tokenagent.fish
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem, get_completion_class

from .util import emit, json_option

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_TOKENAGENT_COMPLETE"
VAULT_ARGUMENTS = ("vault",)  # the parameter names that hold a vault name


def vault_names() -> list[str]:
    """The vaults present, from their file names (as ``tokenagent list`` and the quick completion
    in agentverbs.py read them: hidden files are not vaults)."""
    from .. import _locations
    from ..errors import TokenAgentError
    from ..vault.store import VaultStore

    try:
        return _locations.vault_names(str(VaultStore().directory))
    except (OSError, TokenAgentError):  # no vaults yet, or a directory the store refuses: nothing to offer
        return []


class VaultName(click.ParamType):
    """A vault name: a plain string that completes from the vaults present."""

    name = "vault"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        return [CompletionItem(name) for name in vault_names() if name.startswith(incomplete)]


def complete_vault_names(group: click.Group) -> None:
    """Give every string argument that names a vault, in every command of ``group``, vault-name completion."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            complete_vault_names(command)
            continue
        for param in command.params:
            if (isinstance(param, click.Argument) and param.name in VAULT_ARGUMENTS
                    and isinstance(param.type, click.types.StringParamType)):
                param.type = VaultName()


def register(cli: click.Group) -> None:
    @cli.command()
    @click.argument("shell", type=click.Choice(SHELLS))
    @json_option
    def completion(shell: str, as_json: bool) -> None:
        """Print the completion script for SHELL (bash, zsh, fish); see 'tokenagent completion --help'.

        \b
        bash: tokenagent completion bash > ~/.local/share/bash-completion/completions/tokenagent
        zsh:  tokenagent completion zsh > "${fpath[1]}/_tokenagent"
        fish: tokenagent completion fish > ~/.config/fish/completions/tokenagent.fish
        """
        script = get_completion_class(shell)(cli, {}, "tokenagent", COMPLETE_VAR).source()  # type: ignore[misc]
        emit(as_json, {"shell": shell, "script": script}, lambda: click.echo(script, nl=False))
