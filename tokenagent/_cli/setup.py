"""``tokenagent setup systemd``: install the systemd user units for the installed tokenagent.

    tokenagent setup systemd [--unit-dir DIR] [--enable/--no-enable] [--json]

The units shipped in ``tokenagent/data/systemd`` name ``%h/.local/bin/tokenagent`` and the
default data directory; this writes them with ``ExecStart=`` naming the executable that runs
this command, ``ReadWritePaths=`` naming the data directory in use (``XDG_DATA_HOME`` is
honoured and, when set, passed to the agent with ``Environment=``) and ``ExecStartPre=`` making it (the sandbox cannot make a missing
path writable, so on a fresh home the agent could not), creates that directory (0700) too, and runs
``systemctl --user daemon-reload`` and ``enable --now tokenagent.socket`` when a user manager
is there. udev rules need root: it prints the commands instead of running them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import click

from .. import paths
from ..errors import UsageError
from .util import emit, json_option

UNITS = ("tokenagent.socket", "tokenagent.service")
RULES = "70-tokenagent.rules"
DEFAULT_EXEC = "%h/.local/bin/tokenagent"
DEFAULT_RW = "-%h/.local/share/tokenagent"


def _shipped(kind: str, name: str) -> str:
    return resources.files("tokenagent").joinpath("data", kind, name).read_text()


def executable() -> str:
    """The command that starts this tokenagent: its console script, else this interpreter with -m."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name == "tokenagent" and script.exists():
        return str(script.resolve())
    found = shutil.which("tokenagent")
    if found:
        return str(Path(found).resolve())
    return f"{sys.executable} -m tokenagent._cli.entry"


def render_service(exec_path: str, data: Path, xdg_data_home: str | None) -> str:
    """The service unit for this installation (the shipped one with its paths filled in)."""
    text = _shipped("systemd", "tokenagent.service")
    if any(c.isspace() for c in exec_path.split(" -m ")[0]):
        raise UsageError(f"the executable's path {exec_path!r} has spaces, which ExecStart= cannot take")
    text = text.replace(f"ExecStart={DEFAULT_EXEC} agent", f"ExecStart={exec_path} agent")
    text = text.replace(f"ReadWritePaths={DEFAULT_RW}", f"ReadWritePaths=-{data}")
    text = text.replace(f"ExecStartPre=+/bin/mkdir -p -m 0700 {DEFAULT_RW[1:]}",
                        f"ExecStartPre=+/bin/mkdir -p -m 0700 {data}")
    if xdg_data_home:
        text = text.replace("[Service]\n", f"[Service]\nEnvironment=XDG_DATA_HOME={xdg_data_home}\n", 1)
    return text


def _user_unit_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME")
    base = Path(config) if config and os.path.isabs(config) else Path.home() / ".config"
    return base / "systemd" / "user"


def _systemctl(*args: str) -> str | None:
    """Run ``systemctl --user ARGS``; None when it worked, else why not."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return "systemctl is not installed"
    done = subprocess.run([systemctl, "--user", *args], capture_output=True, text=True, timeout=60)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


@click.group()
def setup() -> None:
    """Install tokenagent's system integration (systemd user units)."""


@setup.command()
@click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the units [default: ~/.config/systemd/user].")
@click.option("--enable/--no-enable", default=True, show_default=True,
              help="Reload the user manager and enable tokenagent.socket.")
@json_option
def systemd(unit_dir: Path | None, enable: bool, as_json: bool) -> None:
    """Install the systemd user units (socket activation) for this tokenagent."""
    if os.environ.get(paths.ENV_HOME):
        raise UsageError(f"{paths.ENV_HOME} is set: the user units serve the XDG locations; unset it first")
    unit_dir = unit_dir or _user_unit_dir()
    data = paths.ensure_private_dir(paths.data_dir())
    xdg = os.environ.get("XDG_DATA_HOME")
    units = {"tokenagent.socket": _shipped("systemd", "tokenagent.socket"),
             "tokenagent.service": render_service(executable(), data, xdg if xdg and os.path.isabs(xdg) else None)}
    unit_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in units.items():
        target = unit_dir / name
        temp = target.with_name(f".{name}.tmp")
        temp.write_text(content)
        os.replace(temp, target)
        written.append(str(target))
    problems = []
    if enable:
        for args in (("daemon-reload",), ("enable", "--now", "tokenagent.socket")):
            why = _systemctl(*args)
            if why is not None:
                problems.append(f"systemctl --user {' '.join(args)}: {why}")
                break
    rules = resources.files("tokenagent").joinpath("data", "udev", RULES)
    udev = [f"sudo install -m644 {rules} /etc/udev/rules.d/{RULES}",
            "sudo udevadm control --reload && sudo udevadm trigger"]

    def text() -> None:
        for path in written:
            click.echo(f"wrote {path}")
        click.echo(f"ExecStart: {executable()} agent; data directory: {data}")
        for problem in problems:
            click.echo(f"not enabled ({problem}): run 'systemctl --user daemon-reload &&"
                       " systemctl --user enable --now tokenagent.socket' in your session")
        if enable and not problems:
            click.echo("enabled and started tokenagent.socket")
        click.echo("For token access and the agent's start on plug-in, install the udev rules (root):")
        for line in udev:
            click.echo(f"  {line}")

    emit(as_json, {"units": written, "exec": executable(), "data_dir": str(data), "enabled": enable and not problems,
                   "problems": problems, "udev_commands": udev}, text)


def register(cli: click.Group) -> None:
    cli.add_command(setup)
