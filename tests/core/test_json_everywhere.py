"""Every command takes --json (DESIGN §8): a walk over the command tree, and errors as JSON objects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

# 'get' is parsed by tokenagent.fastget before click (its --json is tested with the agent);
# 'virtual-token run' is the test device's foreground loop, not a user command.
PARSED_ELSEWHERE = {("get",), ("virtual-token", "run")}


def leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += leaf_commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


def test_every_command_has_a_json_option() -> None:
    from tokenagent._cli.main import _load_commands, cli

    _load_commands()
    missing = [" ".join(path) for path, command in leaf_commands(cli)
               if path not in PARSED_ELSEWHERE
               and not any(isinstance(p, click.Option) and "--json" in p.opts for p in command.params)]
    assert missing == []


def test_json_errors_are_one_object(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {**os.environ, "TOKENAGENT_HOME": str(home)}
    for args in (["slots", "nosuch", "--json"], ["cryptomator", "forget-masterkey", "nosuch", "--yes", "--json"]):
        done = subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", *args], env=env, capture_output=True,
                              text=True, timeout=60)
        answer = json.loads(done.stdout)
        assert done.returncode != 0 and answer["ok"] is False and answer["error"] and answer["message"], args


def test_agent_logs_json_lines(tmp_path: Path) -> None:
    import time

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    sock = home / "run" / "agent.sock"
    env = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_SOCKET": str(sock)}
    proc = subprocess.Popen([sys.executable, "-m", "tokenagent._cli.entry", "agent", "--json"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        status = subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", "status", "--json"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert json.loads(status.stdout)["ok"] is True
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is one JSON object
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
