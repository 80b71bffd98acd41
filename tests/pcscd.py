"""A private pcscd with the vsmartcard vpcd driver, and virtual tokens plugged into it.

DESIGN §4: pcscd 1.9.9 always puts its socket in /run/pcscd, so a private instance runs in
its own mount namespace (``unshare --mount``) over a tmpfs /run/pcscd, never touching a
pcscd the user runs. Clients reach it through ``/proc/PID/root/run/pcscd/pcscd.comm``
(``PCSCLITE_CSOCK_NAME``, which the client library honours). The vpcd driver gets free
TCP ports of its own through a private reader.conf.d. Needs root (namespaces, mounts);
elsewhere the dependent tests skip, and under CI (TOKENAGENT_STRICT_SKIPS=1) they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from agentkit import stop_process

VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"


def pcscd_options(help_text: str) -> list[str]:
    """The options a private pcscd needs beyond ``--foreground --config DIR``, from what ``pcscd
    --help`` offers. pcscd 2.x as Debian 13 builds it asks polkit (over the system D-Bus) about
    every client, and with no system bus turns them all away: ``--disable-polkit``, where it
    exists (1.9.9 does not know the option and refuses to start with it)."""
    return ["--disable-polkit"] if "--disable-polkit" in help_text else []


def pcscd_help() -> str:
    done = subprocess.run(["pcscd", "--help"], capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


# What pcscd logs when it turns a client away (pcsc-lite 2.x with polkit: auth.c, winscard_svc.c)
_REFUSALS = ("Rejected unauthorized", "NOT authorized", "polkit")


def refusals(log: str) -> str:
    """pcscd's own lines about clients it refused or about polkit ("" when there are none)."""
    return "\n".join(line for line in log.splitlines() if any(word in line for word in _REFUSALS))


def missing() -> str | None:
    """Why a private pcscd cannot run here (None: it can)."""
    if os.getuid() != 0:
        return "a private pcscd needs root (mount namespace); CI runs as root"
    for tool in ("pcscd", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages pcscd, util-linux)"
    if not os.path.exists(VPCD_DRIVER):
        return f"{VPCD_DRIVER} is missing (Debian package vsmartcard-vpcd)"
    return None


# vpcd gives one reader.conf entry two reader slots, slot i listening on port + i. A second
# entry naming the same driver file does not work (the library is loaded once and keeps one
# port), so each further pair of readers loads its own copy of the driver file: dlopen
# loads a copy at another path as a separate library, with its own port.
READERS = 4
SLOTS_PER_ENTRY = 2

def free_ports(count: int) -> int:
    """A base port with ``count`` consecutive free ports."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            probes = []
            for i in range(count):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("0.0.0.0", base + i))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return base
    raise RuntimeError("no free ports for vpcd")


class PrivatePcscd:
    """``reader_name`` is the readers' FRIENDLYNAME (pcscd adds " 00 00", " 00 01"; further pairs
    get " A", " B" after the name). ykcs11 lists only readers whose name starts with "Yubico":
    ``PrivatePcscd(dir, "Yubico Virtual PCD")`` (ykman takes a reader for a USB YubiKey only when
    its name holds "Yubico YubiKey", so it still sees an NFC reader)."""

    def __init__(self, workdir: Path, reader_name: str = "Virtual PCD") -> None:
        self.workdir = workdir
        self.reader_name = reader_name
        self.port = free_ports(READERS)
        conf = workdir / "reader.conf.d"
        conf.mkdir(parents=True)
        entries = []
        for entry in range(READERS // SLOTS_PER_ENTRY):
            driver = VPCD_DRIVER
            if entry:
                driver = str(workdir / f"libifdvpcd-{entry}.so")
                shutil.copyfile(VPCD_DRIVER, driver)
            port = self.port + SLOTS_PER_ENTRY * entry
            name = reader_name + (f" {chr(ord('A') + entry)}" if entry else "")
            entries.append(f'FRIENDLYNAME "{name}"\nDEVICENAME   /dev/null:0x{port:04X}\n'
                           f"LIBPATH      {driver}\nCHANNELID    0x{port:04X}\n")
        (conf / "vpcd").write_text("\n".join(entries))
        self.log = workdir / "pcscd.log"
        script = ("mkdir -p /run/pcscd && mount -t tmpfs -o mode=0755 tmpfs /run/pcscd"
                  f" && exec pcscd --foreground --config {conf} {' '.join(pcscd_options(pcscd_help()))}")
        self.tokens: list[TokenProcess] = []
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.socket = Path(f"/proc/{self.proc.pid}/root/run/pcscd/pcscd.comm")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pcscd exited: {self.log_text()}")
            if self.socket.exists() and all(_listening(self.port + i) for i in range(READERS)):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pcscd did not start: {self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def explain(self) -> str:
        """What to add to a failure message: pcscd's refusals of clients, when it logged any."""
        refused = refusals(self.log_text())
        return f"; pcscd turned clients away:\n{refused}" if refused else ""

    @property
    def env(self) -> dict[str, str]:
        return {"PCSCLITE_CSOCK_NAME": str(self.socket)}

    def wait_cards(self, count: int, timeout: float = 15.0) -> None:
        """Wait until pcscd sees exactly ``count`` cards (it polls the vpcd readers about once a second)."""
        done = subprocess.run([sys.executable, "-c", _WAIT_CARDS, str(count), str(timeout)],
                              env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout + 10)
        if done.returncode != 0:
            raise RuntimeError(f"pcscd did not show {count} card(s): {done.stdout}{done.stderr}{self.explain()}")

    def stop(self) -> None:
        """Stop pcscd and every token still plugged into it (a test that failed half-way leaves none behind)."""
        for token in list(self.tokens):
            token.stop()
        stop_process(self.proc)


# Cards are counted from pcscd's reader states (present, not mute), never by connecting: a
# connection's disconnect powers the card off (pyscard's default disposition), which would
# break a session another process (the agent under test) has open on the same card.
_WAIT_CARDS = """
import sys, time
from smartcard import scard
want, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
_, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
while True:
    _, names = scard.SCardListReaders(context, [])
    present = 0
    if names:
        rc, states = scard.SCardGetStatusChange(context, 0, [(n, scard.SCARD_STATE_UNAWARE) for n in names])
        for _, state, _ in states if rc == scard.SCARD_S_SUCCESS else []:
            if state & scard.SCARD_STATE_PRESENT and not state & scard.SCARD_STATE_MUTE:
                present += 1
    if present == want:
        sys.exit(0)
    if time.monotonic() > deadline:
        print(f"{present} card(s) present")
        sys.exit(1)
    time.sleep(0.1)
"""


def _listening(port: int) -> bool:
    """Is something listening on TCP ``port``? Read from /proc: a probe connection would be a card to vpcd."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


class TokenProcess:
    """``tokenagent virtual-token run`` as a process, plugged into a private pcscd."""

    def __init__(self, pcscd: PrivatePcscd, state: Path, serial: int, touch: str = "auto",
                 touch_delay: float = 1.0, plugged: bool = True) -> None:
        self.state = state
        self.serial = serial
        self.pcscd = pcscd
        if len(pcscd.tokens) >= READERS:
            raise RuntimeError(f"the private pcscd has {READERS} virtual readers")
        self.port = pcscd.port + len(pcscd.tokens)  # one reader slot per token
        args = [sys.executable, "-m", "tokenagent._cli.entry", "virtual-token", "run", "--state", str(state),
                "--serial", str(serial), "--vpcd", f"127.0.0.1:{self.port}", "--touch", touch,
                "--touch-delay", str(touch_delay)]
        if not plugged:
            args.append("--unplugged")
        self.log = state.with_suffix(".log")
        self.plugged = False
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            ctl = state.with_name(state.name + ".ctl")
            deadline = time.monotonic() + 20
            while not ctl.exists():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"virtual token did not start: {self.log.read_text()}{pcscd.explain()}")
                time.sleep(0.05)
            self.plugged = plugged
            pcscd.tokens.append(self)
            self._settle()
        except BaseException:
            # A token whose start-up failed is stopped here: the caller never got the object to stop
            self.stop()
            if self in pcscd.tokens:
                pcscd.tokens.remove(self)
            raise

    def _settle(self) -> None:
        self.pcscd.wait_cards(sum(1 for t in self.pcscd.tokens if t.plugged))

    def control(self, command: str) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(15)
            s.connect(str(self.state.with_name(self.state.name + ".ctl")))
            s.sendall(command.encode() + b"\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return json.loads(data)

    def plug(self) -> None:
        self.control("plug")
        self.plugged = True
        self._settle()

    def unplug(self) -> None:
        self.control("unplug")
        self.plugged = False
        self._settle()

    def touch(self) -> None:
        self.control("touch")

    def stop(self) -> None:
        self.plugged = False
        stop_process(self.proc)

    def remove(self) -> None:
        """Stop the token and take it out of its reader for good (its reader can take another
        token): returns once pcscd no longer shows its card, so a token started next in the same
        reader is not mistaken for this one."""
        self.stop()
        self.pcscd.tokens.remove(self)
        self._settle()
