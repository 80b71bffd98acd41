"""The virtual token for python-fido2's own device tests (their sdist's tests/device), as a pytest plugin.

Two pieces, used by scripts/fido2_device_suite.py:

- ``OperatorServer``: the operator. python-fido2's device conftest drives a person's steps (touch
  the key, remove it, insert it) through its own ``--controller URL`` option, the HTTP interface
  of the USB power/touch switch its authors test real keys with (GET /usbN/power/on|off,
  /usbN/touch/on|off). This server answers those requests by plugging, unplugging and touching
  a virtual token through the given control functions: for the token behind the private pcscd,
  its control socket (``tokenagent virtual-token plug|unplug|touch``).
- Loaded with ``-p fido2_device_plugin`` (for the CTAPHID run): a fresh in-process virtual token
  whose CTAPHID front end is the one HID device python-fido2's ``fido2.hid`` lists and opens
  (while it is plugged in), and an ``OperatorServer`` for it, given to their conftest as
  ``--controller``. The patch is made when pytest imports this plugin, before their conftest
  imports ``list_descriptors`` and ``open_connection`` from ``fido2.hid``.

Nothing of python-fido2's tests is changed or copied.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PICO_PORT = 1  # the "USB port" of the switch; any number, given to their conftest as --pico-port


class OperatorServer:
    """An HTTP server speaking the device tests' controller interface, acting on one token."""

    def __init__(self, plug: Callable[[], None], unplug: Callable[[], None], touch: Callable[[], None]) -> None:
        actions = {("power", "on"): plug, ("power", "off"): unplug, ("touch", "on"): touch, ("touch", "off"): None}
        self.log: list[str] = []
        log = self.log

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                match = re.fullmatch(r"/usb\d+/(power|touch)/(on|off)", self.path)
                action = actions.get((match.group(1), match.group(2))) if match else None
                if match and (action is not None or self.path.endswith("touch/off")):
                    log.append(self.path.split("/", 2)[2])
                    if action is not None:
                        action()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="operator").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _install_virtual_hid() -> OperatorServer:
    import fido2.hid
    from fido2.hid.base import HidDescriptor

    from tokenagent.virtual.ctaphid import VirtualHidConnection, hid_descriptor
    from tokenagent.virtual.token import VirtualToken

    state = Path(os.environ.get("TOKENAGENT_FIDO2_SUITE_STATE") or tempfile.mkdtemp(prefix="fido2-suite-")) / "t.json"
    token = VirtualToken(state, touch="explicit")
    descriptor = hid_descriptor(token.serial)
    path = descriptor.path

    def list_descriptors() -> list[HidDescriptor]:
        return [descriptor] if token.hid.plugged else []

    def get_descriptor(wanted: str) -> HidDescriptor:
        if wanted != path or not token.hid.plugged:
            raise ValueError(f"no HID device at {wanted}")
        return descriptor

    def open_connection(wanted: HidDescriptor) -> VirtualHidConnection:
        get_descriptor(wanted.path)
        return VirtualHidConnection(token.hid)

    fido2.hid.list_descriptors = list_descriptors
    fido2.hid.get_descriptor = get_descriptor
    fido2.hid.open_connection = open_connection

    def unplug() -> None:
        token.hid.unplug()
        token.card.power_off()

    def plug() -> None:
        token.card.power_on()
        token.hid.plug()

    return OperatorServer(plug, unplug, token.touch)


_operator: OperatorServer | None = None
if os.environ.get("TOKENAGENT_FIDO2_SUITE_HID") == "1":
    _operator = _install_virtual_hid()


def pytest_configure(config: Any) -> None:
    if _operator is not None:
        config.option.controller = _operator.url
        config.option.pico_port = PICO_PORT


def pytest_unconfigure(config: Any) -> None:
    if _operator is not None:
        print(f"\noperator steps: {' '.join(_operator.log)}")
