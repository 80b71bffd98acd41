"""Where the agent's socket is, computed with ``os`` alone (paths.py wraps these in Path).

The client's fast path (``tokenagent get``) imports this instead of pathlib, which costs it
several milliseconds per run; the rules are those documented in paths.py.
"""

from __future__ import annotations

import os

ENV_HOME = "TOKENAGENT_HOME"
ENV_SOCKET = "TOKENAGENT_SOCKET"


def runtime_dir() -> str:
    home = os.environ.get(ENV_HOME)
    if home:
        return os.path.join(home, "run")
    value = os.environ.get("XDG_RUNTIME_DIR")
    if value and os.path.isabs(value):
        return os.path.join(value, "tokenagent")
    return f"/tmp/tokenagent-{os.getuid()}"


def agent_socket() -> str:
    return os.environ.get(ENV_SOCKET) or os.path.join(runtime_dir(), "agent.sock")


GET_SUFFIX = ".get"  # the get socket (docs/spec/protocol.md) is the agent socket's path plus this


def get_socket(agent_socket_path: str) -> str:
    return agent_socket_path + GET_SUFFIX


SSH_SUFFIX = ".ssh"  # the ssh-agent socket (docs/ssh.md) is the agent socket's path plus this


def ssh_socket(agent_socket_path: str) -> str:
    return agent_socket_path + SSH_SUFFIX
