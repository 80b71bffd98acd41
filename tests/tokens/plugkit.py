"""Helpers for the plug-in tests (a private pcscd with virtual tokens, the real agent and CLI):
a home whose agent asks PINs with pinentry-curses, a FIDO2 key with a PIN and vaults on it, the
agent's event stream recorded, and a desktop notification service on a private session bus."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from agentkit import Person, cli, private_home
from pcscd import PrivatePcscd, TokenProcess

from tokenagent.client import AgentClient

FIDO2_PIN = "135790"


def pinentry_home(tmp_path: Path) -> tuple[Path, Person]:
    """A home whose agent asks PINs with the real pinentry-curses, on the terminal of a Person."""
    program = shutil.which("pinentry-curses")
    assert program, "pinentry-curses is not installed (Debian package pinentry-curses)"
    person = Person()
    return private_home(tmp_path, f'[agent]\npinentry = "{program}"\npinentry_tty = "{person.tty}"\n'), person


def fido2_pin_vaults(pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path, serial: int,
                     vaults: tuple[str, ...]) -> tuple[Path, Person, Path, TokenProcess]:
    """A FIDO2 key with the PIN ``FIDO2_PIN`` and ``vaults`` made on it with a UV slot, in a
    ``pinentry_home``; the key unplugged at the end. (home, person, the token's state file, the token)."""
    from fido2.ctap2 import Ctap2
    from fido2.ctap2.pin import ClientPin
    from fido2.pcsc import CtapPcscDevice

    from tokenagent.virtual.token import VirtualToken

    state = tmp_path / "pin.json"
    ClientPin(Ctap2(CtapPcscDevice(VirtualToken(state, serial=serial).connection(), "setup"))).set_pin(FIDO2_PIN)
    home, person = pinentry_home(tmp_path)
    token = TokenProcess(pcscd, state, serial)
    tokens.append(token)
    pin = tmp_path / "pin"
    pin.write_text(FIDO2_PIN + "\n")
    for vault in vaults:
        done = cli(home, "init", vault, "--fido2", "--fido2-uv", "--pin-file", str(pin), env=pcscd.env)
        assert done.returncode == 0, done.stderr
    token.unplug()
    return home, person, state, token


class EventRecorder:
    """The agent's event stream, read in a thread into ``events`` until ``close``."""

    def __init__(self, socket_path: Path) -> None:
        self.events: list[dict[str, Any]] = []
        self._client = AgentClient(socket_path, timeout=None)
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        with contextlib.suppress(Exception):  # ended by close()
            for event in self._client.events():
                self.events.append(event)

    def wait_for(self, event: str, vault: str, timeout: float = 10.0) -> None:
        """Until the stream has brought ``event`` for ``vault``: it is another connection than the one a
        ``get`` was answered on, so it may arrive a moment after that answer."""
        deadline = time.monotonic() + timeout
        while not any(e["event"] == event and e.get("vault") == vault for e in list(self.events)):
            assert time.monotonic() < deadline, f"no {event} event for {vault}: {self.events}"
            time.sleep(0.02)

    def close(self) -> None:
        self._client.close()


class NotificationService:
    """A desktop's notification service on a private session bus: it records what it is asked to show."""

    def __init__(self, workdir: Path) -> None:
        import subprocess

        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection

        daemon = shutil.which("dbus-daemon")
        assert daemon, "dbus-daemon is not installed (Debian packages dbus-daemon, dbus-session-bus-common)"
        socket_path = workdir / "session-bus"
        self.address = f"unix:path={socket_path}"
        self.daemon = subprocess.Popen([daemon, "--session", "--nofork", f"--address={self.address}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            assert time.monotonic() < deadline and self.daemon.poll() is None, "dbus-daemon did not start"
            time.sleep(0.05)
        self.connection = open_dbus_connection(bus=self.address)
        self.connection.send_and_get_reply(message_bus.RequestName("org.freedesktop.Notifications"))
        self.calls: list[tuple[str, tuple[object, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        from jeepney import HeaderFields, MessageType, new_method_return

        while not self._stop.is_set():
            try:
                message = self.connection.receive(timeout=0.2)
            except TimeoutError:
                continue
            if message.header.message_type != MessageType.method_call:
                continue
            member = message.header.fields.get(HeaderFields.member)
            self.calls.append((str(member), tuple(message.body)))
            if member == "Notify":
                self.connection.send(new_method_return(message, "u", (len(self.calls),)))
            else:
                self.connection.send(new_method_return(message))

    def stop(self) -> None:
        from agentkit import stop_process

        self._stop.set()
        self._thread.join(5)
        self.connection.close()
        stop_process(self.daemon)
