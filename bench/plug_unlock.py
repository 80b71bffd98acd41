#!/usr/bin/env python3
"""Plug to unlocked through pcscd: what the agent adds to the token's own work.

A private pcscd (tests/pcscd.py: root, pcscd, vsmartcard-vpcd) with one virtual FIDO2 key,
unplugged. Each round plugs the key in (the token's control socket) and stops the clock when:

* agent: the agent's ``unlocked`` event for the vault arrives (its PC/SC watcher noticed the
  card, picked the vault's plug slot, ran the pre-flight and the hmac-secret assertion, opened
  the slot and checked the MAC);
* peer: a bare python-fido2 client that is already waiting for a card as PC/SC clients do
  (blocked in SCardGetStatusChange) has done the same hmac-secret assertion on the same
  credential (key agreement, getAssertion with the salt, decryption of the output), with no
  agent running.

pcscd notices the card by polling the vpcd reader (up to 0.4 s after the plug, a random
phase); that wait is nobody's work but pcscd's, so each round's clock starts when pcscd reports
the card to a client blocked in SCardGetStatusChange (the peer itself, or an observer process
next to the agent, woken at the same moment as the agent's watcher). The difference of the
medians is then the agent's cost from plug to unlocked. Goal (DESIGN §7 / issue 17): at most 50 ms.

    .venv/bin/python bench/plug_unlock.py [-n 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import ROOT, machine, pcscd_with_token

sys.path.insert(0, str(ROOT / "tests"))
from agentkit import cli, private_home, start_agent  # noqa: E402
from pcscd import PrivatePcscd, TokenProcess  # noqa: E402

from tokenagent.client import AgentClient  # noqa: E402

PEER = r"""
import base64, json, secrets, sys, time
from smartcard import scard
from smartcard.System import readers
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin, PinProtocolV2
from fido2.pcsc import CtapPcscDevice
params, observe_only = json.loads(sys.argv[1]), sys.argv[2] == "observe"
credential, salt = base64.b64decode(params["credential"]), base64.b64decode(params["salt"])
_, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
_, names = scard.SCardListReaders(context, [])
print("ready", flush=True)
for line in sys.stdin:                       # one line per round: the key is being plugged in now
    states = [(name, scard.SCARD_STATE_UNAWARE) for name in names]
    while True:                              # wait for a card as PC/SC clients do: blocking on a change
        _, found = scard.SCardGetStatusChange(context, 5000, states)
        present = [n for n, state, _ in found if state & scard.SCARD_STATE_PRESENT]
        if present:
            break
        states = [(n, state & ~scard.SCARD_STATE_CHANGED) for n, state, _ in found]
    seen = time.monotonic()
    if observe_only:
        print(f"{seen:.6f}", flush=True)
        continue
    reader = next(r for r in readers() if str(r) == present[0])
    conn = reader.createConnection()
    conn.connect()
    ctap = Ctap2(CtapPcscDevice(conn, "peer"))
    protocol = PinProtocolV2()
    key_agreement, shared = protocol.encapsulate(ctap.client_pin(2, ClientPin.CMD.GET_KEY_AGREEMENT)[1])
    enc = protocol.encrypt(shared, salt)
    out = ctap.get_assertion(params["rp"], secrets.token_bytes(32), [{"type": "public-key", "id": credential}],
                             {"hmac-secret": {1: key_agreement, 2: enc, 3: protocol.authenticate(shared, enc), 4: 2}})
    protocol.decrypt(shared, out.auth_data.extensions["hmac-secret"])
    done = time.monotonic()
    conn.disconnect()
    print(f"{seen:.6f} {done:.6f}", flush=True)
"""

def wait_until(check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.01)


class Client:
    """The bare client (or only its card watch, ``observe``) as a process waiting for rounds."""

    def __init__(self, pcscd: PrivatePcscd, params: dict[str, object], mode: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", PEER, json.dumps(params), mode],
                                     env={**os.environ, **pcscd.env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        assert self.stdout.readline().strip() == "ready"

    def arm(self) -> None:
        self.stdin.write("go\n")
        self.stdin.flush()

    def result(self) -> list[float]:
        return [float(x) for x in self.stdout.readline().split()]

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(30)


def agent_rounds(pcscd: PrivatePcscd, token: TokenProcess, home: Path, params: dict[str, object],
                 n: int) -> list[float]:
    """From pcscd reporting the card (seen by an observer blocked in SCardGetStatusChange, as the
    agent's watcher is) to the agent's unlocked event."""
    agent = start_agent(home, extra_env=pcscd.env)
    observer = Client(pcscd, params, "observe")
    unlocked: list[float] = []
    listener = AgentClient(agent.socket, timeout=None)

    def listen() -> None:
        try:
            for event in listener.events():
                if event["event"] == "unlocked":
                    unlocked.append(time.monotonic())
        except Exception:  # noqa: BLE001 - closed at the end
            pass

    threading.Thread(target=listen, daemon=True).start()
    time.sleep(1.0)  # the event stream is open before the first plug
    times = []
    try:
        for i in range(n):
            observer.arm()
            token.control("plug")
            (seen,) = observer.result()
            wait_until(lambda i=i: len(unlocked) > i)
            times.append(unlocked[i] - seen)
            token.control("unplug")
            with AgentClient(agent.socket) as client:
                wait_until(lambda client=client: not client.status()["vaults"][0]["unlocked"])
            pcscd.wait_cards(0)
    finally:
        observer.close()
        listener.close()
        agent.stop()
    return times


def peer_rounds(pcscd: PrivatePcscd, token: TokenProcess, params: dict[str, object], n: int) -> list[float]:
    """From the bare client's own SCardGetStatusChange reporting the card to its hmac-secret output."""
    peer = Client(pcscd, params, "assert")
    try:
        times = []
        for _ in range(n):
            peer.arm()
            token.control("plug")
            seen, done = peer.result()
            times.append(done - seen)
            token.control("unplug")
            pcscd.wait_cards(0)
        return times
    finally:
        peer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10)
    args = parser.parse_args()
    with pcscd_with_token("plug_unlock", 7001, touch_delay=0.0) as (tmp, pcscd, token):
        home = private_home(tmp, "[agent]\nremoval_grace = 0\nnotify = false\n")
        done = cli(home, "init", "docs", "--fido2", env=pcscd.env)
        if done.returncode != 0:
            sys.exit(f"plug_unlock: init failed: {done.stderr}")
        vault = json.loads((home / "data" / "vaults" / "docs.vault").read_text())
        params = vault["slots"][0]["factors"][0]["params"]
        token.unplug()
        agent = agent_rounds(pcscd, token, home, params, args.n)
        peer = peer_rounds(pcscd, token, params, args.n)
    a, p = statistics.median(agent), statistics.median(peer)
    print(f"plug to unlocked through pcscd, median of {args.n}, {machine()}")
    print(f"  bare python-fido2 client (hmac-secret)   {p * 1000:7.1f} ms   (min {min(peer) * 1000:.1f})")
    print(f"  tokenagent agent (unlocked event)        {a * 1000:7.1f} ms   (min {min(agent) * 1000:.1f})")
    print(f"  added by the agent: {(a - p) * 1000:+.1f} ms  ({a / p:.2f}x; goal: at most +50 ms)")


if __name__ == "__main__":
    main()
