"""``tokenagent virtual-token``: run a virtual token in a real pcscd, and plug, unplug or touch it.

    tokenagent virtual-token run --state FILE [--serial N] [--vpcd HOST:PORT] [--uhid] [--touch MODE]
    tokenagent virtual-token plug|unplug|touch|status --state FILE

``run`` keeps the token in the foreground (state in FILE, created on first run) and listens
for control commands on FILE.ctl, a Unix socket (0600). docs/virtual-token.md has the rest.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import click

from ..errors import TokenError, UsageError
from .util import emit, json_option

TOUCH_MODES = ("auto", "delay", "explicit", "refuse")
DEFAULT_VPCD = "127.0.0.1:35963"


def control_path(state: Path) -> Path:
    return state.with_name(state.name + ".ctl")


def _parse_vpcd(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise UsageError(f"--vpcd {value!r}: use HOST:PORT, e.g. 127.0.0.1:35963") from None


@click.group(name="virtual-token")
def virtual_token() -> None:
    """A software YubiKey (FIDO2) for tests and demos, as a card in a real pcscd."""


@virtual_token.command()
@click.option("--state", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The token's state file (keys, PIN, counters); created on first run.")
@click.option("--serial", type=int, help="Serial number of a new token.")
@click.option("--vpcd", help="Where pcscd's vpcd driver listens [default: 127.0.0.1:35963, none with --uhid].")
@click.option("--uhid", is_flag=True,
              help="Also (or, without --vpcd, only) be a USB YubiKey's FIDO and OTP HID interfaces through"
                   " /dev/uhid (Linux, root or access to /dev/uhid).")
@click.option("--usbip", is_flag=True,
              help="Also (or, without --vpcd, only) be a USB YubiKey 5 (OTP, FIDO and CCID interfaces) exported by"
                   " a USB/IP server on 127.0.0.1 (bus id 1-1; attach it with 'usbip attach -r 127.0.0.1 -b 1-1').")
@click.option("--usbip-port", type=int, default=3240, show_default=True, help="The USB/IP server's TCP port.")
@click.option("--usbip-attach", is_flag=True,
              help="With --usbip: attach the device to this machine's vhci-hcd on every plug (root, modprobe"
                   " vhci-hcd), so plug and unplug are a USB hot-plug.")
@click.option("--touch", type=click.Choice(TOUCH_MODES), default="auto", show_default=True,
              help="auto: touched at once; delay: after --touch-delay; explicit: 'touch' command; refuse: never.")
@click.option("--touch-delay", type=float, default=1.0, show_default=True)
@click.option("--unplugged", is_flag=True, help="Start unplugged (plug it with 'virtual-token plug').")
def run(state: Path, serial: int | None, vpcd: str | None, uhid: bool, usbip: bool, usbip_port: int,
        usbip_attach: bool, touch: str, touch_delay: float, unplugged: bool) -> None:
    """Run a virtual token in the foreground until SIGTERM or Ctrl-C."""
    usbip = usbip or usbip_attach
    if usbip and uhid:
        raise UsageError("--uhid and --usbip are two ways to be the same USB key: give one of them")
    from ..daemon.sockets import bind_private
    from ..virtual.token import VirtualToken
    from ..virtual.vpcd import VpcdClient

    try:
        token = VirtualToken(state, serial, touch, touch_delay)
    except ValueError as err:  # a state file of another token
        raise UsageError(f"{err}: give its --serial, or another --state for a new token") from None
    usb = uhid or usbip
    transports = _Transports(token, None if vpcd is None and usb else _parse_vpcd(vpcd or DEFAULT_VPCD), uhid,
                             VpcdClient, (usbip_port, usbip_attach) if usbip else None)
    ctl = control_path(state)
    with contextlib.suppress(FileNotFoundError):
        ctl.unlink()
    server = bind_private(ctl)
    server.listen(8)
    stop = threading.Event()

    def plug() -> dict[str, Any]:
        transports.plug()
        return {"plugged": True}

    def handle(conn: socket.socket) -> None:
        with conn:
            command = conn.recv(64).decode(errors="replace").strip()
            try:
                if command == "plug":
                    answer = plug()
                elif command == "unplug":
                    transports.unplug()
                    answer = {"plugged": False}
                elif command == "touch":
                    token.touch()
                    answer = {"touched": True}
                elif command == "status":
                    answer = {}
                else:
                    raise UsageError(f"unknown command {command!r}")
                answer = {"ok": True, "serial": token.serial, "plugged": transports.plugged, **answer}
            except (TokenError, UsageError) as err:
                answer = {"ok": False, "error": err.code, "message": err.message}
            conn.sendall(json.dumps(answer).encode() + b"\n")

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            handle(conn)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if not unplugged:
        plug()
    click.echo(f"virtual token {token.serial} {'plugged into' if transports.plugged else 'ready for'}"
               f" {transports.describe()}; control: {ctl}", err=True)
    threading.Thread(target=serve, daemon=True).start()
    try:
        while not stop.wait(0.2):
            pass
    finally:
        transports.unplug()
        server.close()
        with contextlib.suppress(FileNotFoundError):
            ctl.unlink()


class _Transports:
    """The transports a running virtual token is plugged into: vpcd (a card in pcscd), uhid (USB HID)."""

    def __init__(self, token: Any, vpcd: tuple[str, int] | None, uhid: bool, vpcd_client: Any,
                 usbip: tuple[int, bool] | None = None) -> None:
        self.vpcd = vpcd
        self.parts: list[Any] = []
        if vpcd is not None:
            self.parts.append(vpcd_client(token.card, *vpcd))
        if uhid:
            from ..virtual.uhid import UhidToken

            self.parts.append(UhidToken(token))
        if usbip is not None:
            from ..virtual.usbip import UsbipServer

            self.parts.append(UsbipServer(token, port=usbip[0], attach=usbip[1]))

    @property
    def plugged(self) -> bool:
        return any(part.plugged for part in self.parts)

    def describe(self) -> str:
        where = f"vpcd at {self.vpcd[0]}:{self.vpcd[1]}" if self.vpcd is not None else ""
        names = {"VpcdClient": where, "UhidToken": "USB HID (uhid)"}
        return " and ".join(names.get(type(part).__name__, f"USB/IP (127.0.0.1:{getattr(part, 'port', '')}, bus id"
                                      " 1-1)") for part in self.parts)

    def plug(self) -> None:
        for part in self.parts:
            try:
                part.plug()
            except OSError as err:
                if self.vpcd is not None and type(part).__name__ == "VpcdClient":
                    raise TokenError(f"cannot reach vpcd at {self.vpcd[0]}:{self.vpcd[1]} ({err.strerror or err}):"
                                     " is pcscd running with the vsmartcard-vpcd driver?") from None
                if type(part).__name__ == "UsbipServer":
                    raise TokenError(f"cannot plug in the USB/IP device ({err.strerror or err}): is the port free"
                                     " and, with --usbip-attach, vhci-hcd loaded (modprobe vhci-hcd) and this root?"
                                     ) from None
                raise TokenError(f"cannot create the USB HID device ({err.strerror or err}): is the uhid module"
                                 " loaded (modprobe uhid) and /dev/uhid writable?") from None

    def unplug(self) -> None:
        for part in self.parts:
            part.unplug()


def _control(state: Path, command: str) -> dict[str, Any]:
    path = control_path(state)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(15)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise UsageError(f"no virtual token runs with --state {state} (start: tokenagent virtual-token run"
                             f" --state {state})") from None
        s.sendall(command.encode() + b"\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    answer = json.loads(data)
    if not answer.get("ok"):
        raise TokenError(answer.get("message", "the virtual token refused"))
    return answer


def _control_command(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text)
    @click.option("--state", type=click.Path(dir_okay=False, path_type=Path), required=True)
    @json_option
    def command(state: Path, as_json: bool) -> None:
        answer = _control(state, name)
        emit(as_json, answer, f"virtual token {answer['serial']}: {'plugged in' if answer['plugged'] else 'unplugged'}"
             + (" (touched)" if answer.get("touched") else ""))

    return command


for _name, _help in (("plug", "Plug the token in (connect to vpcd)."), ("unplug", "Pull the token out."),
                     ("touch", "Touch the token (for --touch explicit)."), ("status", "Show the token.")):
    virtual_token.add_command(_control_command(_name, _help))


@click.command()
@click.option("--pkcs11-module", "modules", multiple=True, metavar="PATH",
              help="Also list the tokens of this PKCS#11 module (and those of [devices] pkcs11_modules in config.toml).")
@json_option
def devices(modules: tuple[str, ...], as_json: bool) -> None:
    """List the tokens present (FIDO2 over HID and PC/SC, PIV and OTP, PKCS#11), without spending PIN tries."""
    from ..daemon.config import load_config
    from ..discovery import describe_devices, pcsc_readers

    configured = load_config().pkcs11_modules
    found = describe_devices(tuple(dict.fromkeys([*modules, *configured])))
    readers = pcsc_readers()

    def text() -> None:
        if not found:
            click.echo("no tokens found" + ("" if readers else " (and pcscd shows no readers)"))
        for d in found:
            line = f"{d['type']}: {d['name']}"
            if d.get("serial"):
                line += f", serial {d['serial']}"
            if "error" in d:
                line += f" (not usable: {d['error']})"
            elif d["type"] == "piv":
                keys = ", ".join(f"{k['slot']} {k['algorithm']}" for k in d["decryption_keys"]) or "none"
                line += f", PIV {d['version']}, PIN {d['pin_retries']} tries left, decryption keys: {keys}"
            elif d["type"] == "pkcs11":
                pin = "locked" if d["pin_locked"] else "final try" if d["pin_final_try"] else (
                    "low" if d["pin_count_low"] else "ok")
                line += f", {d['manufacturer']} {d['model']} ({d['module']}), PIN {pin}"
            elif d["type"] == "otp":
                slots = ", ".join(f"{s['slot']}{' (touch)' if s['touch'] else ''}" for s in d["configured_slots"])
                line += f", challenge-response slots: {slots or 'none'}"
            else:
                line += f", {'hmac-secret' if d['hmac_secret'] else 'NO hmac-secret'}"
                line += f", PIN {'set, ' + str(d['pin_retries']) + ' tries left' if d['pin_set'] else 'not set'}"
            click.echo(line)

    emit(as_json, {"devices": found, "pcsc_readers": readers}, text)


def register(cli: click.Group) -> None:
    cli.add_command(virtual_token)
    cli.add_command(devices)
