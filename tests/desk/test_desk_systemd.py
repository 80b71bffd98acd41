"""The desk tier's systemd boot: systemd as PID 1, a real user manager (``user@UID.service`` of a
non-root user), ``tokenagent setup systemd``'s units, socket activation, Type=notify, the udev
rule's SYSTEMD_USER_WANTS, and the sandboxed agent on a fresh home (docs/desk.md, docs/agent.md).

The tests run in order in one guest (guest-systemd.sh); each prints what it ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deskkit import SETTLE, UhidToken, run

# the host side waits for the whole guest
pytestmark = [pytest.mark.desk, pytest.mark.desk_systemd, pytest.mark.timeout(1800)]

USER, UID = "desk", 4242
HOME = Path("/home/desk")
RUNTIME = f"/run/user/{UID}"
TOKENAGENT = str(Path(sys.prefix) / "bin" / "tokenagent")


def as_user(*args: str, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """ARGS as the test user in a login-like environment (no TOKENAGENT_HOME: the XDG places)."""
    base = {"HOME": str(HOME), "USER": USER, "LOGNAME": USER, "XDG_RUNTIME_DIR": RUNTIME,
            "PATH": f"{Path(TOKENAGENT).parent}:/usr/bin:/bin", "TOKENAGENT_TEST_KDF": "1", **(env or {})}
    return run("setpriv", f"--reuid={UID}", f"--regid={UID}", "--init-groups", "--reset-env", "env",
               *(f"{k}={v}" for k, v in base.items()), *args, check=check, timeout=timeout)


def show(unit: str, *props: str) -> dict[str, str]:
    done = as_user("systemctl", "--user", "show", "-p", ",".join(props), unit)
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def wait_state(unit: str, state: str) -> dict[str, str]:
    deadline = time.monotonic() + SETTLE
    while True:
        props = show(unit, "ActiveState", "SubState", "MainPID")
        if props.get("ActiveState") == state or time.monotonic() > deadline:
            return props
        time.sleep(1)


def journal(unit: str) -> None:
    run("journalctl", "--no-pager", "-q", f"_SYSTEMD_USER_UNIT={unit}", "-n", "40", check=False)
    run("journalctl", "--no-pager", "-q", "--user-unit", unit, "-n", "40", check=False)


@pytest.fixture(scope="module")
def user_manager() -> Iterator[None]:
    if os.environ.get("TOKENAGENT_DESK_SYSTEMD") != "1":
        pytest.skip("runs in the desk tier's systemd guest (guest-systemd.sh)")
    run("systemctl", "start", f"user@{UID}.service", timeout=600)
    run("systemctl", "show", "-p", "ActiveState,SubState,MainPID", f"user@{UID}.service")
    run("systemctl", "--version")
    yield
    run("systemctl", "stop", f"user@{UID}.service", check=False, timeout=300)


def test_user_manager_is_systemd_under_pid_1(user_manager: None) -> None:
    assert Path("/proc/1/comm").read_text().strip() == "systemd"
    state = run("systemctl", "is-active", f"user@{UID}.service").stdout.strip()
    assert state == "active"
    done = as_user("systemctl", "--user", "is-system-running", check=False)
    assert done.stdout.strip() in ("running", "degraded", "starting"), done.stdout


def test_setup_systemd_then_the_first_get_starts_the_agent_by_socket_activation(user_manager: None) -> None:
    done = as_user(TOKENAGENT, "setup", "systemd")
    assert "enabled and started tokenagent.socket" in done.stdout
    unit = (HOME / ".config/systemd/user/tokenagent.service").read_text()
    assert f"ExecStart={Path(TOKENAGENT).resolve()} agent" in unit
    # a fresh home: no data directory yet (the units also serve a home where nobody ran setup)
    shutil.rmtree(HOME / ".local/share/tokenagent", ignore_errors=True)
    assert show("tokenagent.socket", "ActiveState")["ActiveState"] == "active"
    assert show("tokenagent.service", "ActiveState")["ActiveState"] == "inactive"
    key = HOME / "disk.keyx"
    get = as_user(TOKENAGENT, "get", "nosuchvault", check=False)  # the first client: socket activation
    props = show("tokenagent.service", "ActiveState", "SubState", "MainPID", "NotifyAccess", "Type",
                 "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic", "TriggeredBy")
    journal("tokenagent.service")
    assert "no vault named 'nosuchvault'" in get.stdout + get.stderr, "the socket-activated agent did not answer"
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["Type"] == "notify" and props["NotifyAccess"] == "main", props
    assert int(props["MainPID"]) > 0
    # Type=notify: the unit became active when the agent said READY=1, after its process started
    assert int(props["ActiveEnterTimestampMonotonic"]) > int(props["ExecMainStartTimestampMonotonic"]) > 0, props
    # the sandboxed agent made its data directory and writes its audit log there
    as_user(TOKENAGENT, "keyfile", "generate", str(key))
    as_user(TOKENAGENT, "init", "v", "--keyfile", str(key))
    as_user(TOKENAGENT, "unlock", "v", "--keyfile", str(key))
    got = as_user(TOKENAGENT, "get", "v", "--context", "desk")
    assert got.stdout.strip()
    audit = HOME / ".local/share/tokenagent/audit.log"
    run("ls", "-la", str(audit.parent))
    assert audit.exists() and "desk" in audit.read_text(), "the agent wrote no audit record"
    assert (audit.parent.stat().st_mode & 0o777) == 0o700


def test_udev_rule_starts_the_user_service_when_the_token_appears(user_manager: None,
                                                                  tmp_path: Path) -> None:
    as_user("systemctl", "--user", "stop", "tokenagent.service")
    assert wait_state("tokenagent.service", "inactive")["ActiveState"] == "inactive"
    token = UhidToken(tmp_path / "token.json")
    try:
        props = wait_state("tokenagent.service", "active")
        as_user("systemctl", "--user", "list-units", "--type=device", "--no-pager", "--all", "*hidraw*")
        devices = as_user("systemctl", "--user", "list-units", "--type=device", "--plain", "--no-legend",
                          "*hidraw*").stdout.split()
        for name in devices:
            if name.endswith(".device"):
                as_user("systemctl", "--user", "show", "-p", "Id,Wants,SysFSPath", name)
        journal("tokenagent.service")
        assert props["ActiveState"] == "active", f"the token's arrival did not start tokenagent.service: {props}"
        wanted = as_user("systemctl", "--user", "show", "-p", "WantedBy", "tokenagent.service").stdout
        assert "hidraw" in wanted, wanted
    finally:
        token.stop()


def test_custom_xdg_data_home_under_the_sandbox(user_manager: None) -> None:
    data_home = HOME / "elsewhere"
    env = {"XDG_DATA_HOME": str(data_home)}
    as_user("systemctl", "--user", "stop", "tokenagent.service")
    as_user(TOKENAGENT, "setup", "systemd", env=env)
    unit = (HOME / ".config/systemd/user/tokenagent.service").read_text()
    print(unit)
    assert f"Environment=XDG_DATA_HOME={data_home}" in unit
    shutil.rmtree(data_home / "tokenagent", ignore_errors=True)  # fresh again: the agent makes it
    key = HOME / "other.keyx"
    as_user(TOKENAGENT, "keyfile", "generate", str(key), env=env)
    status = as_user(TOKENAGENT, "status", env=env)  # socket activation again
    assert show("tokenagent.service", "ActiveState")["ActiveState"] == "active", status.stdout
    as_user(TOKENAGENT, "init", "w", "--keyfile", str(key), env=env)
    as_user(TOKENAGENT, "unlock", "w", "--keyfile", str(key), env=env)
    assert as_user(TOKENAGENT, "get", "w", "--context", "elsewhere", env=env).stdout.strip()
    journal("tokenagent.service")
    audit = data_home / "tokenagent" / "audit.log"
    assert audit.exists() and "elsewhere" in audit.read_text()
    assert not (HOME / ".local/share/tokenagent/vaults/w.json").exists()
